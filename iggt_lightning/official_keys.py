"""The official IGGT / VGGT-1B key mapping, as its owners declare it, and the strict matching of a state dict
against a model: every official key is renamed by a prefix rule or dropped by a named rule; a missing key, a
leftover key or a shape mismatch is an error listing the keys. The rules are not written here: the model declares
the backbone's and each registered head its own (``official_prefixes`` / ``official_drop_rules``, as timm's
models own their ``checkpoint_filter_fn``). Reading files is :mod:`iggt_lightning.checkpoints`' job."""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .checkpoint_error import CheckpointError
from .model import PRESETS, IGGTModel
from .registry import available_heads, qualified_name

# The presets an official file can be, smallest first (official_kind picks the first that holds its heads).
OFFICIAL_PRESETS = ("vggt-large", "iggt-large")


def _listing(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


# ---------------------------------------------------------------------------- the official key mapping
@dataclass(frozen=True)
class OfficialRules:
    """The official key mapping as its owners declare it (``official_prefixes`` / ``official_drop_rules`` of
    :class:`~iggt_lightning.model.IGGTModel` and of each registered head, whose paths are under ``heads.<name>.``).
    Module internals keep the official names; only prefixes change."""

    prefixes: tuple[tuple[str, str], ...]       # official prefix -> our prefix; no prefix starts another
    drops: tuple[tuple[str, str, str], ...]     # (rule name, regex on the official key, why it is safe to drop)
    heads: dict[str, str]                       # official prefix -> the head it belongs to (the model's own: none)


_rules_cache: list = [None, None]               # (the registered heads it was built from, the rules)


def _declared(cls: type, where: str, under: str) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """``cls``'s official prefixes (their paths put under ``under``) and drop rules, checked; errors name ``where``."""
    prefixes, drops = getattr(cls, "official_prefixes", ()), getattr(cls, "official_drop_rules", ())

    def strings(value, n: int) -> bool:
        return isinstance(value, (tuple, list)) and all(
            isinstance(v, (tuple, list)) and len(v) == n and all(isinstance(x, str) for x in v) for v in value)

    if not strings(prefixes, 2) or any(not s.endswith(".") or (d and not d.endswith(".")) for s, d in prefixes):
        raise CheckpointError(f"{where} declares official_prefixes = {prefixes!r}; expected (official prefix, path "
                              "under it) pairs, the prefix ending in '.' and the path '' or ending in '.', e.g. "
                              "(('sky_head.', ''),)")
    if not strings(drops, 3):
        raise CheckpointError(f"{where} declares official_drop_rules = {drops!r}; expected (rule name, regular "
                              "expression on the official key, why it is safe to drop) triples of strings")
    anchors = ["^" + re.escape(src) for src, _ in prefixes]
    for name, pattern, _ in drops:
        if not pattern.startswith(tuple(anchors)):
            raise CheckpointError(f"{where}: drop rule {name!r} ({pattern!r}) must start with one of its own "
                                  f"official prefixes, anchored and escaped: {anchors}")
        try:
            re.compile(pattern)
        except re.error as err:
            raise CheckpointError(f"{where}: drop rule {name!r} is not a valid regular expression ({err})") from err
    return [(src, under + dst) for src, dst in prefixes], [tuple(d) for d in drops]


def official_rules() -> OfficialRules:
    """The official key mapping, from the model's declarations (the backbone's) and those of every registered head
    (a third-party head declares its own the same way); rebuilt when the registered heads change. Two owners of
    one prefix, overlapping prefixes or a rule name used twice are errors naming both."""
    heads = available_heads()
    if _rules_cache[0] == heads:
        return _rules_cache[1]
    prefixes, drops, owner, head_of, rule_owner, seen = [], [], {}, {}, {}, set()
    for name, cls in [(None, IGGTModel), *heads.items()]:
        if cls in seen:                          # one class registered under two names: its first
            continue
        seen.add(cls)
        where = f"{'the model' if name is None else f'head {name!r}'} ({qualified_name(cls)})"
        own, rules = _declared(cls, where, "" if name is None else f"heads.{name}.")
        for src, _ in own:
            other = next((p for p in owner if p.startswith(src) or src.startswith(p)), None)
            if other is not None:
                raise CheckpointError(f"official key prefix {src!r} of {where} overlaps {other!r} of {owner[other]}; "
                                      "every official key must have one owner")
            owner[src] = where
            if name is not None:
                head_of[src] = name
        for rule in rules:
            if rule[0] in rule_owner:
                raise CheckpointError(f"drop rule {rule[0]!r} is declared by {rule_owner[rule[0]]} and {where}")
            rule_owner[rule[0]] = where
        prefixes += own
        drops += rules
    _rules_cache[:] = [heads, OfficialRules(tuple(prefixes), tuple(drops), head_of)]
    return _rules_cache[1]


def drop_rule(key: str, rules: OfficialRules | None = None) -> str | None:
    """The name of the drop rule that removes an official key, or None."""
    for name, pattern, _ in (rules or official_rules()).drops:
        if re.search(pattern, key):
            return name
    return None


def rename_official_key(key: str, rules: OfficialRules | None = None) -> str | None:
    """Our name for an official key, or None when a drop rule removes it."""
    rules = rules or official_rules()
    if drop_rule(key, rules):
        return None
    for src, dst in rules.prefixes:
        if key.startswith(src):
            return dst + key[len(src):]
    raise CheckpointError(f"official key {key!r} matches no mapping rule (expected a prefix among "
                          f"{[p for p, _ in rules.prefixes]})")


def official_kind(keys) -> str:
    """'iggt-large' or 'vggt-large' from the official key set; an error for anything else. An official file has
    the model's own (backbone) keys and keys of some head; its preset is the first of :data:`OFFICIAL_PRESETS`
    whose heads include every head the file has keys of (whose a key is, the heads' official prefixes say)."""
    keys = set(keys)
    rules = official_rules()
    own = tuple(src for src, _ in rules.prefixes if src not in rules.heads)
    present = {head for src, head in rules.heads.items() if any(k.startswith(src) for k in keys)}
    if not present or not any(k.startswith(own) for k in keys):
        sample = _listing(sorted(keys)[:8], 8)
        wanted = "/".join(f"'{p}*'" for p in own)
        heads = ", ".join(f"'{p}*'" for p in rules.heads)
        raise CheckpointError(f"this is not an official IGGT/VGGT checkpoint (it needs {wanted} keys and a head's: "
                              f"{heads}); its keys look like: {sample}")
    return min(OFFICIAL_PRESETS, key=lambda p: (len(present - set(PRESETS[p]["heads"])), len(PRESETS[p]["heads"])))


def rename_official_state_dict(official: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """-> (the state dict under our key names, our key -> its official name); keys a drop rule removes are left
    out, a key no rule covers is an error."""
    rules = official_rules()
    renamed, names = {}, {}
    for key, value in official.items():
        new = rename_official_key(key, rules)
        if new is not None:
            renamed[new], names[new] = value, key
    return renamed, names


def _head_of(key: str) -> str | None:
    """``heads.<name>.…`` -> ``<name>``; None for the backbone and anything else."""
    parts = key.split(".", 2)
    return parts[1] if len(parts) == 3 and parts[0] == "heads" else None


def match_state_dict(model: torch.nn.Module, sd: dict[str, torch.Tensor], *, new_heads_ok: bool = False,
                     drop_heads=(), file_names: dict[str, str] | None = None, what: str = "checkpoint",
                     against: str = "the model"
                     ) -> tuple[dict[str, torch.Tensor], dict[str, list[str]], dict[str, list[str]]]:
    """Match a state dict (our key names) to ``model``'s keys and shapes, without loading anything.

    -> (the tensors to load, new head -> its keys left to their fresh initialisation, dropped head -> the file's
    keys of it that are not loaded). Strict by default: every model key must be in the file with its shape and
    every file key must have a place in the model. ``new_heads_ok``: a head of the model that the file has no
    key of at all is new and keeps its initialisation (a head only partly in the file is still an error).
    ``drop_heads``: heads the configuration leaves out on purpose; their file keys are skipped. A head the file
    has but the model does not is otherwise an error that says to list it there. ``file_names`` gives the
    file's own key names (official checkpoints) for the messages; ``what`` names the file in them and
    ``against`` the model."""
    ours = model.state_dict()
    model_heads = set(getattr(model, "heads", {}))
    named = (lambda k: f"{file_names[k]} (-> {k})") if file_names else (lambda k: k)
    file_heads = {h for h in map(_head_of, sd) if h is not None}
    ignored = {h: sorted(k for k in sd if _head_of(k) == h) for h in sorted(file_heads & set(drop_heads) - model_heads)}
    out: dict[str, torch.Tensor] = {}
    unexpected, mismatched, unconfigured = [], [], {}
    for key, value in sd.items():
        head = _head_of(key)
        if head in ignored:
            continue
        if key not in ours:
            if new_heads_ok and head is not None and head not in model_heads:
                unconfigured.setdefault(head, []).append(key)
            else:
                unexpected.append(named(key))
        elif tuple(ours[key].shape) != tuple(value.shape):
            mismatched.append(f"{file_names[key] if file_names else key}: checkpoint {tuple(value.shape)} vs model "
                              f"{tuple(ours[key].shape)}")
        else:
            out[key] = value
    fresh = {}
    if new_heads_ok:
        for head in model_heads - file_heads:
            keys = [k for k in ours if _head_of(k) == head]
            if keys:
                fresh[head] = keys
    missing = [k for k in ours if k not in out and _head_of(k) not in fresh]
    problems = []
    if missing:
        partial = sorted({h for h in map(_head_of, missing) if h in file_heads}) if new_heads_ok else []
        problems.append(f"{len(missing)} model key(s) missing from the checkpoint: {_listing(missing)}"
                        + (f" (head(s) {partial} are only partly in the file)" if partial else ""))
    if unconfigured:
        problems.append(f"the checkpoint has head(s) {sorted(unconfigured)} "
                        f"({sum(map(len, unconfigured.values()))} tensors) that the configuration does not build; "
                        "to leave them out, list them in model.drop_heads")
    if unexpected:
        problems.append(f"{len(unexpected)} checkpoint key(s) the model does not have: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_listing(mismatched)}")
    if problems:
        raise CheckpointError(f"{what} does not match {against}:\n  " + "\n  ".join(problems))
    return out, fresh, ignored


def convert_official_state_dict(official: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Map an official state dict onto ``model``'s keys; raises :class:`CheckpointError` on any mismatch."""
    renamed, names = rename_official_state_dict(official)
    return match_state_dict(model, renamed, file_names=names)[0]


