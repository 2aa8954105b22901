import os
import warnings
from pathlib import Path

import pytest
import torch

REFERENCE_DIR = Path(os.environ.get("IGGT_REFERENCE_DIR", Path(__file__).resolve().parent / "data" / "reference"))

warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def reference_file(name: str) -> Path:
    path = REFERENCE_DIR / name
    if not path.exists():
        pytest.skip(f"reference file {path} not available (set IGGT_REFERENCE_DIR)")
    return path


@pytest.fixture(scope="session")
def nano_model():
    from iggt_lightning import IGGTModel

    torch.manual_seed(0)
    return IGGTModel.from_preset("nano").eval()
