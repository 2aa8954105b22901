"""How the benchmark scripts measure a run and record where it ran: peak CPU memory, out-of-memory errors, CUDA
synchronisation, the environment (versions, machine, git commit) and the argument types they share."""
from __future__ import annotations

import argparse
import ctypes
import gc
import os
import platform
import subprocess
import sys
import threading
from pathlib import Path

import torch

MIB = 1024 ** 2


# ----------------------------------------------------------------------------- arguments
def parse_size(text: str) -> tuple[int, int]:
    """An ``HxW`` image size (argparse type)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like HxW (e.g. 224x224), got {text!r}") from None
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return h, w


def positive_int(text: str) -> int:
    """A positive integer (argparse type)."""
    v = int(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


# ----------------------------------------------------------------------------- memory
def _read_status(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status, in bytes (None where unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark VmHWM (Linux >= 4.0); True if it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class CpuPeakRSS:
    """Peak RSS increase (bytes) over the value at ``start()``: a 5 ms VmRSS sampler plus VmHWM."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.proc = _read_status("VmRSS") is not None
        self.method = None
        self._stop = threading.Event()
        self._thread = None

    def start(self) -> None:
        gc.collect()
        _malloc_trim()
        if self.proc:
            self.hwm_ok = _reset_hwm()
            self.baseline = _read_status("VmRSS")
            self.peak = self.baseline
            self.method = "VmRSS sampler (5 ms)" + (" + VmHWM reset per config" if self.hwm_ok else "")
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        else:  # fall back to the lifetime peak of getrusage (KiB on Linux, bytes on macOS)
            import resource

            scale = 1 if sys.platform == "darwin" else 1024
            self._ru = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
            self.baseline = self._ru()
            self.method = "ru_maxrss delta (lifetime peak, not resettable)"

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            rss = _read_status("VmRSS")
            if rss is not None and rss > self.peak:
                self.peak = rss

    def stop(self) -> tuple[int, int]:
        """Returns (peak increase, baseline) in bytes."""
        if self.proc:
            self._stop.set()
            self._thread.join()
            peak = max(self.peak, _read_status("VmRSS") or 0)
            if self.hwm_ok:
                peak = max(peak, _read_status("VmHWM") or 0)
        else:
            peak = self._ru()
        return max(0, peak - self.baseline), self.baseline


def is_oom(err: BaseException) -> bool:
    """Whether ``err`` is running out of memory (CUDA or host), which a benchmark reports instead of raising."""
    if isinstance(err, getattr(torch.cuda, "OutOfMemoryError", ())):
        return True
    msg = str(err).lower()
    return isinstance(err, (RuntimeError, MemoryError)) and (
        isinstance(err, MemoryError) or "out of memory" in msg or "can't allocate memory" in msg)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a host clock around it times the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- environment
def git_commit(repo: Path) -> str | None:
    """HEAD of the checkout at ``repo``, with ``-dirty`` when tracked files changed; None outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo``), which the timings and the CPU kernels depend on."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        return None


def environment(device: torch.device, repo: Path) -> dict:
    """Where a run ran: versions, machine, threads, load, GPU, and the git commit of ``repo`` (the checkout the
    benchmark script belongs to)."""
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "git_commit": git_commit(repo),
        "hostname": platform.node(),
        # Other processes compete for the CPU on a shared machine; a load average above the core
        # count at the start means the timings are likely inflated.
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        with open("/proc/meminfo") as f:
            env["mem_total_mib"] = round(int(f.readline().split()[1]) / 1024)
    except (OSError, ValueError, IndexError):
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), gpu=props.name,
                   gpu_memory_mib=round(props.total_memory / MIB),
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    return env


# ----------------------------------------------------------------------------- model quality
def evaluate(cli, prefix: str, **where) -> dict:
    """One test loop of a built ``IGGTCLI`` (clustering, AP, tracking, geometry) as ``{prefix + metric: value}``;
    ``where`` picks the data (``datamodule=`` or ``dataloaders=``)."""
    metrics = cli.trainer.test(cli.model, verbose=False, **where)[0]
    return {prefix + k[len("test/"):]: float(v) for k, v in metrics.items() if k.startswith("test/")}
