"""What the CPU can do natively, where it changes what a user should choose: bf16 matrix products run in hardware
only on CPUs with AVX512-BF16 or AMX-BF16 (x86); elsewhere torch emulates them and bf16 is slower than fp32."""
from __future__ import annotations

import platform

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags (Linux: /proc/cpuinfo), or None where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def native_bf16() -> bool | None:
    """True / False for an x86 CPU with / without bf16 instructions; None where it is not known (not Linux, not
    x86: Apple and recent Arm cores have bf16 instructions of their own)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686"):
        return None
    flags = cpu_flags()
    return None if flags is None else any(f in flags for f in BF16_FLAGS)


def bf16_warning(device_type: str, precision: str) -> str | None:
    """The warning for bf16 on a CPU that has no bf16 instructions (None when there is nothing to say)."""
    if device_type != "cpu" or "bf16" not in str(precision) or native_bf16() is not False:
        return None
    return ("--precision bf16 on a CPU without bf16 instructions (no avx512_bf16 or amx_bf16 among its flags): "
            "torch emulates bf16 here, which is slower than fp32 and less accurate; use --precision 32")
