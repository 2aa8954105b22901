"""bf16 on a CPU: said plainly when the CPU has no bf16 instructions (torch then emulates it, slower than fp32)."""
import pytest

from iggt_lightning import cpu_features
from iggt_lightning.cli import main
from tests.test_predict import assets  # noqa: F401  (the tiny checkpoint + synthetic photos fixture)


def test_the_flags_decide(monkeypatch):
    monkeypatch.setattr(cpu_features.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda: {"avx2", "avx512f"})
    assert cpu_features.native_bf16() is False
    assert "no avx512_bf16 or amx_bf16" in cpu_features.bf16_warning("cpu", "bf16-mixed")
    assert cpu_features.bf16_warning("cuda", "bf16-mixed") is None and cpu_features.bf16_warning("cpu", "32-true") is None
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert cpu_features.native_bf16() is True and cpu_features.bf16_warning("cpu", "bf16-mixed") is None
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda: None)
    assert cpu_features.native_bf16() is None
    monkeypatch.setattr(cpu_features.platform, "machine", lambda: "arm64")
    assert cpu_features.native_bf16() is None


@pytest.mark.parametrize("native", [False, True])
def test_iggt_predict_warns_about_emulated_bf16(native, assets, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setattr(cpu_features, "native_bf16", lambda: native)
    assert main(["predict", str(assets / "photos"), "-c", str(assets / "nano.safetensors"), "-o", str(tmp_path / "o"),
                 "--size", "112", "84", "--quiet", "--precision", "bf16"]) == 0
    err = capsys.readouterr().err
    assert ("warning: --precision bf16 on a CPU without bf16 instructions" in err) is (not native), err
