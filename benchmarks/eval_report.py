"""Our `iggt test` results next to the published numbers of the protocol they ran (configs/eval/published.yaml).

    iggt test --config configs/eval/scannet_table1.yaml ... --results runs/eval/scannet_table1.json
    python -m benchmarks.eval_report runs/eval/*.json [--json report.json] [--markdown report.md]

Each results file names the configs it ran (``--results`` writes them); the protocol is the first config whose
name (without ``.yaml``) is an entry of published.yaml, or ``--protocol NAME`` for all files. Our metrics are
fractions; they are scaled to the published unit (x100 for percentages) before the difference is taken.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "configs" / "eval" / "published.yaml"


def load_published(path: Path = PUBLISHED) -> dict:
    return yaml.safe_load(path.read_text())


def protocol_of(results: dict, published: dict, where: str) -> str:
    for config in results.get("config", []):
        name = Path(config).stem
        if name in published:
            return name
    raise SystemExit(f"{where}: none of its configs {results.get('config')} is a protocol of {PUBLISHED.name} "
                     f"({sorted(published)}); pass --protocol")


def rows_for(results: dict, entry: dict) -> list[dict]:
    rows = []
    for n in entry["numbers"]:
        ours = results["metrics"].get(n["metric"])
        scaled = None if ours is None or not math.isfinite(ours) else ours * n.get("scale", 1)
        rows.append({"name": n["name"], "metric": n["metric"], "ours": scaled, "published": n["published"],
                     "difference": None if scaled is None else scaled - n["published"],
                     "lower_is_better": bool(n.get("lower_is_better", False)),
                     "source": n.get("source", entry["source"])})
    return rows


def _fmt(value: float | None, sign: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.2f}" if sign else f"{value:.2f}"


def markdown(report: list[dict]) -> str:
    out = []
    for r in report:
        out += [f"### {r['protocol']} ({r['file']})", "",
                f"checkpoint: {r['checkpoint'] or 'none given'}; published: {r['source']}", "",
                "| metric | ours | published | ours - published |", "|---|---|---|---|"]
        for row in r["rows"]:
            note = " (lower is better)" if row["lower_is_better"] else ""
            out.append(f"| {row['name']}{note} | {_fmt(row['ours'])} | {row['published']:.2f} | "
                       f"{_fmt(row['difference'], sign=True)} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", type=Path, help="JSON files written by `iggt test ... --results FILE`")
    p.add_argument("--protocol", help="the published.yaml entry for every file (default: from its configs)")
    p.add_argument("--published", type=Path, default=PUBLISHED)
    p.add_argument("--json", type=Path, help="also write the report as JSON")
    p.add_argument("--markdown", type=Path, help="also write the tables as Markdown")
    a = p.parse_args(argv)
    inputs = {path.resolve() for path in a.results}
    for out in (a.json, a.markdown):
        if out is not None and out.resolve() in inputs:
            p.error(f"{out} is one of the results files read; write the report elsewhere")
    published = load_published(a.published)
    if a.protocol and a.protocol not in published:
        p.error(f"--protocol {a.protocol!r} is not in {a.published} ({sorted(published)})")
    report = []
    for path in a.results:
        try:
            results = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            p.error(f"cannot read results file {path}: {err}")
        if not isinstance(results, dict) or not isinstance(results.get("metrics"), dict):
            p.error(f"{path}: not a results file of `iggt test --results` (no 'metrics' object)")
        name = a.protocol or protocol_of(results, published, str(path))
        report.append({"file": str(path), "protocol": name, "source": published[name]["source"],
                       "checkpoint": results.get("ckpt_path") or results.get("init_checkpoint"),
                       "rows": rows_for(results, published[name])})
    text = markdown(report)
    print(text)
    from iggt_lightning.fileio import write_json   # after argument errors, which need no torch

    if a.json:
        write_json(a.json, {"report": report})
    if a.markdown:
        from iggt_lightning.fileio import atomic_write

        atomic_write(a.markdown, lambda tmp: Path(tmp).write_text(text + "\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
