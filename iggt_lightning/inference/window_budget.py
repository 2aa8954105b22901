"""``--window auto``: the largest window whose run fits a memory budget.

How much memory a window takes depends on the model, the input size and the device, so it is measured, not
guessed: two calibration passes on blank views (2, then 4) give the peak memory of the process at each, and the
difference is what one more view costs (the network's activations; global attention's keys and values grow with
the views). The window is then the largest one whose predicted peak, plus an allowance for writing the outputs
(the bounded cloud and one view at a time), stays within the budget: ``--memory-budget`` MiB, by default half
the memory available when the run starts (on a GPU, 80 % of its free memory). Peaks: on Linux the process's
high-water mark (``VmHWM``) is reset before each pass (``/proc/self/clear_refs``), elsewhere the lifetime peak is
used; on a GPU, torch's peak allocation.
"""
from __future__ import annotations

import os
import resource
import sys
from dataclasses import dataclass
from typing import Callable

import torch

MiB = 1 << 20
MAX_AUTO_WINDOW = 48            # the models learn from a few dozen views at most: larger windows lose accuracy
EXPORT_ALLOWANCE = 512 * MiB    # writing: the 2 000 000-point cloud, its layers and one view's maps at a time


class BudgetError(ValueError):
    """A budget no window fits; the message names the option."""


@dataclass
class WindowChoice:
    window: int
    budget: int                 # bytes
    peak_2: int                 # peak bytes of the process at 2 and 4 views
    peak_4: int
    per_view: int               # bytes one more view costs
    device: str

    def manifest(self) -> dict:
        return {"window": self.window, "budget_mib": round(self.budget / MiB, 1),
                "per_view_mib": round(self.per_view / MiB, 2), "peak_at_4_views_mib": round(self.peak_4 / MiB, 1),
                "allowance_mib": round(EXPORT_ALLOWANCE / MiB), "max_window": MAX_AUTO_WINDOW,
                "device": self.device}


def available_memory(device: torch.device) -> int:
    """Bytes the run may use by default: half the memory available now (MemAvailable), or 80 % of a GPU's free
    memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.8 * free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") // 2


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:       # resets VmHWM to the current RSS (Linux >= 4.0)
            f.write("5")
    except OSError:
        pass


def _peak(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024              # ru_maxrss: bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def choose_window(run: Callable[[torch.Tensor], object], size: tuple[int, int], device: torch.device,
                  frames: int, budget: int | None = None) -> WindowChoice:
    """The largest window (3 .. :data:`MAX_AUTO_WINDOW`, at most ``frames``) whose predicted peak fits ``budget``
    bytes (default :func:`available_memory`); ``run(images [1,S,3,H,W])`` runs the network, ``size`` = (W, H)."""
    budget = available_memory(device) if budget is None else int(budget)
    W, H = size
    peaks = {}
    for views in (2, 4):
        _reset_peak(device)
        with torch.inference_mode():
            run(torch.zeros(1, views, 3, H, W, device=device))
        peaks[views] = _peak(device)
    per_view = max((peaks[4] - peaks[2]) // 2, MiB)         # at least a MiB: a flat reading is not free views
    fits = (budget - EXPORT_ALLOWANCE - peaks[4]) // per_view + 4
    window = int(min(fits, MAX_AUTO_WINDOW, frames))
    if window < 3:
        raise BudgetError(f"--window auto: --memory-budget {budget // MiB} MiB holds no window of 3 frames (the "
                          f"model takes {peaks[4] // MiB} MiB at 4 views, {per_view / MiB:.1f} MiB per further "
                          f"view, plus {EXPORT_ALLOWANCE // MiB} MiB to write); give a larger budget or --window N")
    return WindowChoice(window, budget, peaks[2], peaks[4], per_view, str(device))


__all__ = ["BudgetError", "MAX_AUTO_WINDOW", "WindowChoice", "available_memory", "choose_window"]
