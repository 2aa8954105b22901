"""`iggt`'s one table of subcommands (iggt_lightning/cli.py COMMANDS): Lightning's rows are IGGTCLI's
subcommands, `iggt --help` lists every row, and `iggt predict` reads photos unless its first argument is
`--config` (the older spelling of `iggt predict-dataset`): nothing else routes a command."""
import pytest

from iggt_lightning import cli
from iggt_lightning.cli import COMMANDS, main


def test_lightning_rows_are_iggtcli_subcommands_and_help_lists_every_row(capsys):
    from iggt_lightning.lightning_cli import IGGTCLI

    assert {c.trainer_method for c in COMMANDS.values() if c.trainer_method} == set(IGGTCLI.subcommands())
    assert COMMANDS["predict-dataset"].trainer_method == "predict" and COMMANDS["predict"].trainer_method is None
    assert main(["--help"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert listed == list(COMMANDS)
    assert main(["nope"]) == 2
    assert "iggt: unknown subcommand 'nope'; expected one of fit, validate, test, predict-dataset, predict" \
        in capsys.readouterr().err


@pytest.fixture
def routed(monkeypatch):
    """Where each command goes: Lightning (its argv) or the photos form (its inputs); nothing runs."""
    import iggt_lightning.hub
    import iggt_lightning.inference.predict
    import iggt_lightning.lightning_cli

    calls = []
    monkeypatch.setattr(iggt_lightning.lightning_cli, "run_lightning_cli",
                        lambda argv, trust_checkpoint_code=False: calls.append(("lightning", argv,
                                                                                trust_checkpoint_code)))
    monkeypatch.setattr(iggt_lightning.hub, "resolve_checkpoint", lambda spec: spec)

    def photos(opts):
        calls.append(("photos", opts.inputs, opts.checkpoint))
        raise ValueError("stop here")

    monkeypatch.setattr(iggt_lightning.inference.predict, "run_predict", photos)
    # the checks before a Hub id is resolved read the photos: these paths are only routed, never read
    monkeypatch.setattr(iggt_lightning.inference.predict, "check_before_checkpoint", lambda opts: None)
    return calls


@pytest.mark.parametrize("argv, expected", [
    (["predict-dataset", "--config", "c.yaml", "--out", "o"],
     ("lightning", ["predict", "--config", "c.yaml", "--out", "o"], False)),
    (["predict", "--config", "c.yaml", "--out", "o"],
     ("lightning", ["predict", "--config", "c.yaml", "--out", "o"], False)),
    (["predict", "--config=c.yaml", "--ckpt_path", "last", "--out", "o", "--trust-checkpoint-code"],
     ("lightning", ["predict", "--config=c.yaml", "--ckpt_path", "last", "--out", "o"], True)),
    (["fit", "--config", "c.yaml"], ("lightning", ["fit", "--config", "c.yaml"], False)),
    # photos: with their options first, or a folder named like a config
    (["predict", "-c", "m.ckpt", "photos/", "-o", "out"], ("photos", ["photos/"], "m.ckpt")),
    (["predict", "config", "-c", "m.ckpt", "-o", "out"], ("photos", ["config"], "m.ckpt")),
    (["predict", "a.jpg", "b.jpg", "--checkpoint", "m.ckpt", "--out", "out"],
     ("photos", ["a.jpg", "b.jpg"], "m.ckpt")),
])
def test_each_form_goes_to_its_program(routed, argv, expected, capsys):
    rc = main(argv)
    assert routed == [expected]
    assert rc == (2 if expected[0] == "photos" else 0)       # the photos stub stops with an error


@pytest.mark.parametrize("argv", [["predict", "photos/", "-c", "m.ckpt", "-o", "out", "--config", "c.yaml"],
                                  ["predict", "--ckpt_path", "last", "--config", "c.yaml", "--out", "o"]])
def test_dataset_options_after_the_first_argument_are_a_photos_error_naming_the_dataset_form(routed, argv, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and routed == []
    assert err.startswith("iggt predict: error: ") and "iggt predict-dataset --config CFG" in err, err


@pytest.mark.parametrize("sub, option, value, owners", [
    ("fit", "--out", "o", "only iggt predict-dataset takes it, not iggt fit"),
    ("test", "--overwrite", "true", "only iggt predict-dataset takes it, not iggt test"),
    ("fit", "--results", "r.json", "only iggt validate and iggt test take it, not iggt fit"),
    ("predict-dataset", "--results", "r.json", "only iggt validate and iggt test take it, not iggt predict-dataset"),
])
def test_an_option_of_another_subcommand_is_refused_before_anything_is_built(sub, option, value, owners, tmp_path,
                                                                             capsys):
    rc = main([sub, "--config", "synthetic_tiny", "--trainer.default_root_dir", str(tmp_path), option, value,
               *(["--out", str(tmp_path / "p")] if sub == "predict-dataset" else [])])
    err = capsys.readouterr().err
    assert rc == 2 and f"iggt {sub}: error: {option}: {owners}" in err, err
    assert list(tmp_path.iterdir()) == []


def test_predict_dataset_needs_out(tmp_path, capsys):
    assert main(["predict-dataset", "--config", "synthetic_tiny", "--trainer.default_root_dir", str(tmp_path)]) == 2
    assert "iggt predict-dataset: error: --out: iggt predict-dataset needs the folder" in capsys.readouterr().err


def test_the_dataset_form_keeps_its_error_prefix(monkeypatch, capsys):
    import iggt_lightning.lightning_cli

    def refuse(argv, trust_checkpoint_code=False):
        raise FileNotFoundError("c.yaml: no such file")

    monkeypatch.setattr(iggt_lightning.lightning_cli, "run_lightning_cli", refuse)
    assert main(["predict", "--config", "c.yaml"]) == 2
    assert capsys.readouterr().err.startswith("iggt predict: error: c.yaml: no such file")
    assert main(["predict-dataset", "--config", "c.yaml"]) == 2
    assert capsys.readouterr().err.startswith("iggt predict-dataset: error: c.yaml: no such file")
    assert cli._is_dataset_form(["--config", "x"]) and not cli._is_dataset_form(["x", "--config", "y"])


class _Stop(Exception):
    pass


@pytest.mark.parametrize("args, expected", [
    (["fit"], {"weights_only": True}),
    (["fit", "--weights_only", "false"], {"weights_only": False}),
    (["predict", "--out", "o"], {"weights_only": True, "return_predictions": False}),
])
def test_subcommand_defaults_are_set_before_anything_is_built(args, expected):
    """weights_only (torch < 2.6 would unpickle a --ckpt_path file) and return_predictions (the writer has them)."""
    from iggt_lightning.lightning_cli import IGGTCLI

    seen = {}

    class Spy(IGGTCLI):
        def instantiate_classes(self):
            seen.update({k: self.config[self.subcommand].get(k) for k in expected})
            raise _Stop

    with pytest.raises(_Stop):
        Spy(args=[args[0], "--config", "synthetic_tiny", *args[1:]])
    assert seen == expected


@pytest.mark.parametrize("name", [n for n, c in COMMANDS.items() if c.trainer_method])
def test_each_lightning_row_says_its_own_name_in_its_usage_line(name, capsys):
    with pytest.raises(SystemExit):
        main([name, "--help"])
    usage = capsys.readouterr().out.splitlines()[0]
    assert usage.startswith(f"usage: iggt {name} "), usage
