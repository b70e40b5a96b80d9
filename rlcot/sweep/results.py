"""Reading a sweep's run directories: whether a run finished, its summary values by dotted
path, its per-step curves, and each table metric's value for one run.

A study workdir holds summary.json ({"finished": true, "stage_order": [...], "stages":
{name: summary}, plus the final stage's keys at top level}) and one subdirectory per stage
with its metrics.jsonl. A single-stage run directory holds summary.json (no "finished" key:
written only at the end, so finished) and metrics.jsonl directly."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from rlcot.sweep.spec import Metric, Table

FINISHED, UNFINISHED, MISSING = "finished", "unfinished", "missing"


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:  # being written by hand or truncated: not finished
        return None


def run_status(run_dir: Path) -> str:
    """missing: no directory; finished: summary.json says so (or is a single-stage summary);
    unfinished: anything else (an interrupted or failed run)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return MISSING
    summary = read_summary(run_dir)
    if summary is None or summary.get("finished", True) is not True:
        return UNFINISHED
    return FINISHED


def lookup(tree: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path such as 'eval_after.toyworld:test/greedy/pass@1' or
    'stages.rl.wall_time_s'. Keys may themselves hold dots: at each level the longest
    dot-bounded prefix that is a key (and leads to a value) wins. KeyError when absent."""
    if path in tree:
        return tree[path]
    cut = len(path)
    while (cut := path.rfind(".", 0, cut)) > 0:
        head, rest = path[:cut], path[cut + 1:]
        if head in tree and isinstance(tree[head], Mapping):
            try:
                return lookup(tree[head], rest)
            except KeyError:
                pass
    raise KeyError(path)


def read_curves(run_dir: Path, summary: Mapping[str, Any] | None,
                stage: str | None = None) -> list[dict[str, Any]]:
    """metrics.jsonl rows of `stage` (default: the study's final stage; a single-stage run's
    own file), sorted by step."""
    run_dir = Path(run_dir)
    if stage is None and summary and summary.get("stage_order"):
        stage = summary["stage_order"][-1]
    path = (run_dir / stage if stage else run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r.get("step", 0))


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def curve_key(path: str) -> str | None:
    """The per-step key behind a top-level summary path, for best-step selection:
    eval_after.K -> eval/K, final_train.K -> K; None for anything else (stages.S.* paths and
    run totals such as wall_time_s are read from the summary as they are)."""
    for prefix, to in (("eval_after.", "eval/"), ("final_train.", "")):
        if path.startswith(prefix):
            return to + path[len(prefix):]
    return None


def best_row(rows: list[dict[str, Any]], select: str) -> dict[str, Any] | None:
    """The row where select's key ('max:KEY' / 'min:KEY') is best; the earliest on ties."""
    mode, _, key = select.partition(":")
    scored = [(v, r["step"]) for r in rows if (v := _number(r.get(key))) is not None]
    if not scored:
        return None
    best = max(scored, key=lambda x: (x[0], -x[1])) if mode == "max" else \
        min(scored, key=lambda x: (x[0], x[1]))
    return next(r for r in rows if r["step"] == best[1])


def run_values(run_dir: Path, table: Table, stage: str | None = None
               ) -> dict[str, float | None]:
    """Each table metric's value for one finished run (None where the run lacks it); with
    `stage`, read from that stage of the study (its summary and its curves)."""
    summary = read_summary(run_dir) or {}
    if stage is not None:
        stages = summary.get("stages") or {}
        if stage not in stages:
            raise ValueError(f"{run_dir} has no stage {stage!r} (a table row reads it); its "
                             f"stages: {sorted(stages)}")
        summary = stages[stage]
    rows = read_curves(run_dir, summary, stage or table.stage)
    at = best_row(rows, table.select) if table.select != "final" else None
    out: dict[str, float | None] = {}
    for m in table.metrics:
        out[m.name] = _metric_value(m, summary, rows, at, table.select)
    return out


def _metric_value(m: Metric, summary: Mapping[str, Any], rows: list[dict[str, Any]],
                  at: dict[str, Any] | None, select: str) -> float | None:
    if m.curve:
        values = [v for r in rows if (v := _number(r.get(m.curve))) is not None]
        if not values:
            return None
        reduce = {"final": lambda xs: xs[-1], "sum": sum, "max": max, "min": min,
                  "mean": lambda xs: sum(xs) / len(xs)}[m.reduce]
        return float(reduce(values))
    value = _path_value(m.path, summary, at, select)
    if m.divide_by and value is not None:
        divisor = _path_value(m.divide_by, summary, at, select)
        return None if not divisor else value / divisor
    return value


def _path_value(path: str, summary: Mapping[str, Any], at: dict[str, Any] | None,
                select: str) -> float | None:
    key = curve_key(path)
    if select != "final" and key is not None:
        return None if at is None else _number(at.get(key))
    try:
        return _number(lookup(summary, path))
    except KeyError:
        return None
