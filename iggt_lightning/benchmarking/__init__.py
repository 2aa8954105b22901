"""Helpers shared by the repository's benchmark scripts (``python -m benchmarks.NAME``): the doc blocks they
refill (:mod:`.doc_blocks`), how they measure and record a run (:mod:`.measure`) and the official model classes
built from a local checkout for side-by-side runs (:mod:`.official`, imported on its own: it builds models)."""
from .doc_blocks import block_files, fill_block, fill_block_from_json, holder, text_holding
from .measure import MIB, CpuPeakRSS, environment, evaluate, git_commit, is_oom, parse_size, positive_int, sync

__all__ = ["MIB", "CpuPeakRSS", "block_files", "environment", "evaluate", "fill_block", "fill_block_from_json",
           "git_commit", "holder", "is_oom", "parse_size", "positive_int", "sync", "text_holding"]
