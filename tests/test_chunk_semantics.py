"""frames_chunk_size and head.CPU_FRAMES_CHUNK are memory/speed settings: training with any of them gives the same
losses and BatchNorm statistics (training decodes the whole batch at once), and inference the same outputs."""
import pytest
import torch
from torch import nn

import iggt_lightning.head as head_module
from iggt_lightning.data.synthetic import SyntheticScenes
from iggt_lightning.module import IGGTLitModule

STEPS = 3
# (model frames_chunk_size, CPU_FRAMES_CHUNK): the first decodes everything at once; the others used to split the
# 2 scenes x 3 views = 6 frames into chunks of 1, 2 or 4 (+2) during training; (8, 2) is the default on CPU
SETTINGS = [(None, None), (1, None), (4, None), (None, 1), (8, 2)]


def _batch():
    ds = SyntheticScenes(length=2, num_views=3, image_size=(28, 28), num_objects=(1, 3), seed=3)
    items = [ds[i] for i in range(2)]
    return {k: torch.stack([it[k] for it in items]) for k in
            ("images", "depth", "extrinsics", "intrinsics", "world_points", "valid_mask", "instance_ids")}


def _train(frames_chunk_size, cpu_chunk, monkeypatch):
    monkeypatch.setattr(head_module, "CPU_FRAMES_CHUNK", cpu_chunk)
    torch.manual_seed(0)
    module = IGGTLitModule(preset="nano", drop_heads=["track"], frames_chunk_size=frames_chunk_size)
    module.train()
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    batch = module._prepare(_batch())
    losses = []
    for _ in range(STEPS):
        terms = module.compute_losses(module.model(batch["images"]), batch)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        losses.append(torch.stack([terms[k].detach() for k in sorted(terms)]))
    return module, torch.stack(losses)


def _bn_state(module):
    return {f"{name}.{k}": v.clone() for name, m in module.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for k, v in m.state_dict().items() if k in ("running_mean", "running_var", "num_batches_tracked")}


@pytest.fixture(scope="module")
def trained():
    mp = pytest.MonkeyPatch()
    try:
        return {s: _train(*s, mp) for s in SETTINGS}
    finally:
        mp.undo()


def test_training_does_not_depend_on_the_chunk_settings(trained):
    ref_module, ref_losses = trained[SETTINGS[0]]
    ref_bn = _bn_state(ref_module)
    assert ref_bn, "the nano model has no BatchNorm: this test checks nothing"
    for key, value in ref_bn.items():
        if key.endswith("num_batches_tracked"):
            assert int(value) == STEPS, key                # one update per training forward, not one per chunk
    for setting in SETTINGS[1:]:
        module, losses = trained[setting]
        assert torch.equal(losses, ref_losses), (setting, losses - ref_losses)
        for key, value in _bn_state(module).items():
            assert torch.equal(value, ref_bn[key]), (setting, key)
        for (name, p), q in zip(module.named_parameters(), ref_module.parameters()):
            assert torch.equal(p, q), (setting, name)


def test_inference_does_not_depend_on_the_chunk_settings(trained, monkeypatch):
    module = trained[SETTINGS[0]][0].eval()
    images = _batch()["images"]
    outputs = {}
    for fc, cpu in SETTINGS:
        monkeypatch.setattr(head_module, "CPU_FRAMES_CHUNK", cpu)
        module.model.frames_chunk_size = fc
        with torch.no_grad():
            outputs[(fc, cpu)] = module.model(images)
    module.model.frames_chunk_size = None
    ref = outputs[SETTINGS[0]]
    assert {"depth", "world_points", "part_feat"} <= ref.keys()
    for setting in SETTINGS[1:]:
        for k, v in ref.items():
            if not isinstance(v, torch.Tensor) or k == "images":
                continue
            assert torch.allclose(outputs[setting][k], v, rtol=0, atol=1e-5 * float(v.abs().max())), (setting, k)


def test_eval_mode_still_decodes_in_chunks(monkeypatch):
    """Chunking is kept where it saves memory: a head in eval mode gets slices of at most the chunk size."""
    from iggt_lightning.head import HeadInput

    monkeypatch.setattr(head_module, "CPU_FRAMES_CHUNK", None)
    inp = HeadInput([], 0, torch.zeros(2, 3, 3, 14, 14), frames_chunk_size=4)
    assert inp.frame_chunks() == [slice(0, 4), slice(4, 6)]
    inp.training = True
    assert inp.frame_chunks() == [slice(0, 6)]
