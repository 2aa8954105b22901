"""The bounds of a number option, one rule for every option table (loss options, export options): whether a value
is inside, and how the bounds read in a message."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """Bounds of a number option (``Annotated[float, Range(0, low_open=True)]``: > 0)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, v: float) -> bool:
        lo_ok = self.low is None or (v > self.low if self.low_open else v >= self.low)
        hi_ok = self.high is None or (v < self.high if self.high_open else v <= self.high)
        return lo_ok and hi_ok

    def text(self) -> str:
        lo, hi = self.low, self.high
        if lo is not None and hi is not None:
            return f" in {'(' if self.low_open else '['}{lo:g}, {hi:g}{')' if self.high_open else ']'}"
        if lo is not None:
            return f" {'>' if self.low_open else '>='} {lo:g}"
        return "" if hi is None else f" {'<' if self.high_open else '<='} {hi:g}"
