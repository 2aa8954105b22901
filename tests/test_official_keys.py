"""The official key mapping is declared by its owners (the backbone in IGGTModel, each head in its class) and
checkpoints.py only assembles it: the table it builds, a third-party head's own prefix, bad declarations."""
from pathlib import Path

import pytest

from iggt_lightning import checkpoints
from iggt_lightning.checkpoints import CheckpointError, official_kind, official_rules, rename_official_key
from iggt_lightning.head import Head
from iggt_lightning.registry import HEADS, available_heads

# The mapping as checkpoints.py spelled it out before the heads declared it themselves.
EXPECTED_PREFIXES = {
    "aggregator.": "backbone.", "camera_head.": "heads.camera.", "depth_head.": "heads.depth.dpt.",
    "point_head.": "heads.point.dpt.", "track_head.": "heads.track.", "part_adaptor.": "heads.instance.adaptor.",
    "part_head.": "heads.instance.decoder.",
}


def test_the_declarations_make_the_official_table_and_checkpoints_names_no_head():
    assert dict(checkpoints.OFFICIAL_PREFIXES) == EXPECTED_PREFIXES
    assert len(checkpoints.OFFICIAL_PREFIXES) == len(EXPECTED_PREFIXES)
    assert [name for name, _, _ in checkpoints.DROP_RULES] == ["dino-mask-token", "part-head-dead-dpt-base"]
    assert official_rules().heads["part_head."] == "instance"
    source = Path(checkpoints.__file__).read_text(encoding="utf-8")
    named = [p for p in EXPECTED_PREFIXES if p in source]
    assert not named, f"checkpoints.py names official prefixes {named}; their owners declare them"
    with pytest.raises(AttributeError, match="IGGTLitModule.from_checkpoint_file"):
        checkpoints.load_module


class SkyHead(Head):
    official_prefixes = (("sky_head.", "net."),)
    official_drop_rules = (("sky-unused", r"^sky_head\.unused\.", "never run"),)


def test_a_registered_head_declares_its_own_official_keys(monkeypatch):
    monkeypatch.setitem(HEADS.classes, "sky", SkyHead)
    assert rename_official_key("sky_head.conv.weight") == "heads.sky.net.conv.weight"
    assert rename_official_key("sky_head.unused.bias") is None
    # the preset is the smaller official one holding the file's other heads (no preset has a sky head)
    assert official_kind(["aggregator.x", "camera_head.y", "sky_head.z"]) == "vggt-large"
    assert official_kind(["aggregator.x", "sky_head.z", "part_head.w"]) == "iggt-large"
    monkeypatch.delitem(HEADS.classes, "sky")
    with pytest.raises(CheckpointError, match="sky_head.conv.weight.*matches no mapping rule"):
        rename_official_key("sky_head.conv.weight")


@pytest.mark.parametrize("attrs, message", [
    ({"official_prefixes": (("camera_head.extra.", ""),)}, "'camera_head.' of head 'camera'.*overlaps "
                                                           "'camera_head.extra.' of head 'bad'"),
    ({"official_prefixes": (("bad_head", ""),)}, "head 'bad'.*official_prefixes.*ending in '.'"),
    ({"official_prefixes": "bad_head."}, "head 'bad'.*official_prefixes"),
    ({"official_prefixes": (("bad_head.", ""),), "official_drop_rules": (("x", r"^camera_head\.", "?"),)},
     "drop rule 'x'.*must start with one of its own official prefixes"),
    ({"official_prefixes": (("bad_head.", ""),), "official_drop_rules": (("dino-mask-token", r"^bad_head\.", "?"),)},
     "drop rule 'dino-mask-token' is declared by the model.*and head 'bad'"),
    ({"official_prefixes": (("bad_head.", ""),), "official_drop_rules": (("x", r"^bad_head\.(", "?"),)},
     "drop rule 'x' is not a valid regular expression"),
])
def test_a_bad_declaration_is_one_error_naming_the_head(monkeypatch, attrs, message):
    monkeypatch.setitem(HEADS.classes, "bad", type("BadHead", (Head,), attrs))
    with pytest.raises(CheckpointError, match=message) as err:
        official_rules()
    assert "\n" not in str(err.value)
    monkeypatch.delitem(HEADS.classes, "bad")
    assert "bad" not in available_heads() and dict(official_rules().prefixes) == EXPECTED_PREFIXES   # usable again
