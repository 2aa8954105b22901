"""The optimizer and learning-rate schedule from a config (iggt_lightning/optimizers.py): a YAML ``optimizer:``
trains with that optimizer over the module's own parameter groups; nothing given is exactly the AdamW + warm-up
cosine of before; only torch.optim's classes are ever named, and a checkpoint never names one."""
import math
from pathlib import Path

import pytest
import torch

from iggt_lightning.lightning_cli import IGGTCLI, module_arguments, stored_state_check
from iggt_lightning.module import IGGTLitModule
from iggt_lightning.optimizers import registered, resolve
from iggt_lightning.stored_state import StoredStateError
from tests.test_cli_training import tiny_args


def _fast(root: Path) -> list[str]:
    """tiny_args on the nano preset without validation: two optimizer steps in seconds."""
    return [*tiny_args(root), "--model.preset", "nano", "--trainer.limit_val_batches", "0",
            "--trainer.num_sanity_val_steps", "0"]


def test_a_yaml_optimizer_and_scheduler_train_over_the_module_parameter_groups(tmp_path):
    (tmp_path / "opt.yaml").write_text("optimizer:\n  class_path: SGD\n  init_args: {momentum: 0.9}\n"
                                       "lr_scheduler:\n  class_path: StepLR\n  init_args: {step_size: 1, gamma: 0.5}\n")
    cli = IGGTCLI(args=["fit", *_fast(tmp_path / "run"), "--config", str(tmp_path / "opt.yaml"),
                        "--model.lr", "0.01", "--model.backbone_lr", "0.001"])
    assert cli.trainer.global_step == 2
    opt = cli.trainer.optimizers[0]
    sched = cli.trainer.lr_scheduler_configs[0]
    assert type(opt) is torch.optim.SGD and type(sched.scheduler) is torch.optim.lr_scheduler.StepLR
    assert sched.interval == "step"
    assert {g["momentum"] for g in opt.param_groups} == {0.9}
    # the groups are the module's: backbone / heads learning rates, each halved once per step by StepLR
    assert sorted({g["initial_lr"] for g in opt.param_groups}) == [0.001, 0.01]
    assert sorted({g["lr"] for g in opt.param_groups}) == pytest.approx([0.001 / 4, 0.01 / 4])
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, cli.model.hparams.weight_decay}
    # never a hyper-parameter: a checkpoint does not name the class
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert not {"optimizer", "lr_scheduler"} & set(last["hyper_parameters"])
    assert set(last["optimizer_states"][0]["param_groups"][0]) >= {"momentum", "nesterov"}   # SGD's state


def _old_configure_optimizers(module: IGGTLitModule, total: int):
    """configure_optimizers as it was before the optimizer was configurable (the reference of the default)."""
    hp = module.hparams
    backbone_lr = hp.backbone_lr if hp.backbone_lr is not None else hp.lr
    groups: dict = {}
    for name, p in module.model.named_parameters():
        if not p.requires_grad:
            continue
        lr = backbone_lr if name.startswith("backbone.") else hp.lr
        no_decay = p.ndim <= 1 or name.endswith(("token", "tokens", "pos_embed"))
        groups.setdefault((lr, 0.0 if no_decay else hp.weight_decay), []).append(p)
    opt = torch.optim.AdamW([{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()])
    warm = min(hp.warmup_steps, max(0, total - 1))

    def schedule(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


class _Trainer:
    estimated_stepping_batches = 12


def test_nothing_configured_is_the_old_adamw_and_warm_up_cosine_exactly():
    module = IGGTLitModule(preset="nano", lr=2e-3, backbone_lr=5e-4, warmup_steps=3, drop_heads=["track"])
    module._trainer = _Trainer()
    got = module.configure_optimizers()
    opt, sched = got["optimizer"], got["lr_scheduler"]["scheduler"]
    ref_opt, ref_sched = _old_configure_optimizers(module, _Trainer.estimated_stepping_batches)
    assert type(opt) is torch.optim.AdamW and type(sched) is torch.optim.lr_scheduler.LambdaLR
    assert got["lr_scheduler"]["interval"] == "step"
    # the same groups, the same parameters in the same order, the same settings
    assert len(opt.param_groups) == len(ref_opt.param_groups) == 4
    assert {g["initial_lr"] for g in opt.param_groups} == {2e-3, 5e-4}         # heads, backbone
    for g, ref in zip(opt.param_groups, ref_opt.param_groups):
        assert [id(p) for p in g["params"]] == [id(p) for p in ref["params"]]
        assert {k: v for k, v in g.items() if k != "params"} == {k: v for k, v in ref.items() if k != "params"}
    lrs, ref_lrs = [], []
    for _ in range(14):                       # warm-up, decay, and past the end
        lrs.append([g["lr"] for g in opt.param_groups])
        ref_lrs.append([g["lr"] for g in ref_opt.param_groups])
        sched.step()
        ref_sched.step()
    assert lrs == ref_lrs                     # bit for bit
    assert sched.state_dict()["lr_lambdas"] == [None] * 4  # a plain function: the stored state stays data


@pytest.mark.parametrize("spec, message", [
    ("os.system", "optimizer.class_path: 'os.system' is not usable; expected one of torch.optim's"),
    ("mypkg.SGD", "optimizer.class_path: 'mypkg.SGD' is not usable"),
    ({"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}}, "optimizer.init_args.lr: given by the module"),
    ({"class_path": "SGD", "init_args": {"momentun": 0.9}}, "optimizer.init_args: SGD does not take ['momentun']"),
    ({"class_path": "SGD", "init_args": {"momentum": print}}, "optimizer.init_args.momentum: expected plain data"),
    ({"class_path": "SGD", "extra": 1}, "optimizer: expected a class name of torch.optim"),
    (3, "optimizer: expected a class name of torch.optim"),
])
def test_an_optimizer_outside_torch_optim_or_with_bad_arguments_is_one_error(spec, message):
    with pytest.raises(ValueError) as err:
        resolve(spec, "optimizer")
    assert str(err.value).startswith(message), str(err.value)


@pytest.mark.parametrize("name, why", [("ReduceLROnPlateau", "monitored metric"), ("LambdaLR", "takes a function"),
                                       ("SequentialLR", "other schedulers")])
def test_schedulers_a_config_cannot_drive_are_refused_with_the_reason(name, why):
    with pytest.raises(ValueError, match=f"lr_scheduler.class_path: '{name}' is not usable \\(.*{why}"):
        resolve(name, "lr_scheduler")
    assert name not in registered("lr_scheduler")


def test_names_resolve_to_torch_classes_by_lookup():
    assert resolve("SGD", "optimizer") == (torch.optim.SGD, {})
    assert resolve("torch.optim.sgd.SGD", "optimizer")[0] is torch.optim.SGD
    assert resolve({"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 2}},
                   "lr_scheduler") == (torch.optim.lr_scheduler.StepLR, {"step_size": 2})
    assert resolve(None, "optimizer") is None
    assert {"SGD", "AdamW", "Adam"} <= set(registered("optimizer")) and "Optimizer" not in registered("optimizer")


def test_the_module_names_the_field_before_building_anything():
    with pytest.raises(ValueError, match=r"^lr_scheduler\.class_path: 'os\.system' is not usable"):
        IGGTLitModule(preset="nano", lr_scheduler="os.system")


def test_a_checkpoint_cannot_name_an_optimizer():
    ckpt = {"state_dict": {}, "hyper_parameters": {"preset": "nano", "lr": 1e-3, "weight_decay": 0.0,
                                                   "warmup_steps": 0, "log_images_every_n_steps": 0,
                                                   "optimizer": {"name": "SGD"}}}
    with pytest.raises(StoredStateError, match=r"x\.ckpt: hyper_parameters\.optimizer: unknown field"):
        stored_state_check()(ckpt, "x.ckpt")
    # and the module's arguments from a file never take one, whatever the schema lets through
    with pytest.raises(ValueError, match=r"unknown hyper-parameter\(s\) \['lr_scheduler'\]"):
        module_arguments({"state_dict": {}, "hyper_parameters": {"lr_scheduler": "StepLR"}}, "x.ckpt")


def _opt_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "opt.yaml"
    path.write_text("optimizer:\n  class_path: SGD\n  init_args: {momentum: 0.9}\n"
                    "lr_scheduler:\n  class_path: StepLR\n  init_args: {step_size: 1, gamma: 0.5}\n")
    return path


def test_a_run_with_a_configured_scheduler_resumes_where_it_stopped(tmp_path):
    """The scheduler's own settings and counters (StepLR's step_size, gamma) are stored state the schema
    accepts, so a resumed run continues the schedule: after 2 + 2 steps the lr is halved 4 times."""
    opt = _opt_yaml(tmp_path)
    IGGTCLI(args=["fit", *_fast(tmp_path / "run"), "--config", str(opt), "--model.lr", "0.01"])
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)["lr_schedulers"][0]
    assert stored["step_size"] == 1 and stored["gamma"] == 0.5 and stored["last_epoch"] == 2
    cli = IGGTCLI(args=["fit", *_fast(tmp_path / "run"), "--config", str(opt), "--model.lr", "0.01",
                        "--trainer.max_steps", "4", "--ckpt_path", str(ckpt)])
    assert cli.trainer.global_step == 4
    heads_lr = max(g["lr"] for g in cli.trainer.optimizers[0].param_groups)
    assert heads_lr == pytest.approx(0.01 / 16)


@pytest.mark.parametrize("field, value", [("step", 1), ("get_last_lr", "x"), ("optimizer", None),
                                          ("gamma", {"class_path": "os.system"}), ("x y", 1)])
def test_a_stored_scheduler_field_cannot_shadow_a_method_or_carry_structure(tmp_path, field, value):
    opt = _opt_yaml(tmp_path)
    IGGTCLI(args=["fit", *_fast(tmp_path / "run"), "--config", str(opt)])
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state["lr_schedulers"][0][field] = value
    hostile = tmp_path / "hostile.ckpt"
    torch.save(state, hostile)
    with pytest.raises(StoredStateError, match=r"lr_schedulers\[0\]"):
        stored_state_check()(torch.load(hostile, map_location="cpu", weights_only=True), hostile)


def test_warm_up_steps_a_configured_scheduler_replaces_are_named_not_silently_dropped(recwarn):
    step_lr = {"class_path": "StepLR", "init_args": {"step_size": 1}}
    with pytest.warns(UserWarning, match=r"model.warmup_steps=30 is not used: lr_scheduler StepLR replaces"):
        IGGTLitModule(preset="nano", warmup_steps=30, lr_scheduler=step_lr)
    recwarn.clear()
    IGGTLitModule(preset="nano", warmup_steps=0, lr_scheduler=step_lr)      # nothing replaced: nothing said
    IGGTLitModule(preset="nano", warmup_steps=30)                            # the default schedule uses it
    assert not [w for w in recwarn if "warmup_steps" in str(w.message)]
