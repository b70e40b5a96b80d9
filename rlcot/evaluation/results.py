"""Evaluation results: one row of metrics per benchmark, as markdown/CSV/JSON, plus per-item JSONL."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from pathlib import Path
from typing import Any

from rlcot.workdir import write_json

# Columns that are counts, token lengths or seconds; every other metric is a rate in [0, 1].
_NOT_RATES = ("n", "dropped", "seconds")


@dataclasses.dataclass
class BenchmarkResult:
    """Metrics of one eval set. metrics keys: 'greedy/pass@1', 'greedy/len', 'sampled/avg@8',
    'sampled/pass@4', 'sampled/maj@8', ... (see rlcot.evaluation.runner). records: one dict
    per completion (prompt id, row, pass, sample, completion, extracted answer, correct, ...).
    timings: seconds per phase ('prompts', 'greedy', 'sampled', 'score')."""

    label: str
    num_prompts: int
    num_dropped: int
    metrics: dict[str, float]
    records: list[dict[str, Any]]
    timings: dict[str, float]

    @property
    def seconds(self) -> float:
        return float(sum(self.timings.values()))

    def row(self) -> dict[str, Any]:
        return {"benchmark": self.label, "n": self.num_prompts, "dropped": self.num_dropped,
                **self.metrics, "seconds": round(self.seconds, 2)}


@dataclasses.dataclass
class EvalResult:
    benchmarks: dict[str, BenchmarkResult]  # by label, in evaluation order

    def rows(self) -> list[dict[str, Any]]:
        return [b.row() for b in self.benchmarks.values()]

    def columns(self) -> list[str]:
        cols: dict[str, None] = {}
        for row in self.rows():
            cols.update(dict.fromkeys(row))
        cols.pop("seconds", None)
        return [*cols, "seconds"]

    def flat_metrics(self, prefix: str = "eval") -> dict[str, float]:
        """{'eval/gsm8k:test/greedy/pass@1': 0.25, ...} for a metrics.jsonl line."""
        out = {}
        for label, b in self.benchmarks.items():
            for k, v in {**b.metrics, "seconds": b.seconds}.items():
                out[f"{prefix}/{label}/{k}"] = v
        return out

    def to_json(self) -> dict[str, Any]:
        return {label: {"n": b.num_prompts, "dropped": b.num_dropped, "metrics": b.metrics,
                        "timings": b.timings}
                for label, b in self.benchmarks.items()}

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns(), lineterminator="\n")
        writer.writeheader()
        for row in self.rows():
            writer.writerow({k: _csv_value(v) for k, v in row.items()})
        return buf.getvalue()

    def to_markdown(self) -> str:
        """Rates as percentages with one decimal, lengths in tokens, '-' where not measured."""
        cols = self.columns()
        head = [c if c in _NOT_RATES or c == "benchmark" or _is_length(c) else f"{c} (%)"
                for c in cols]
        lines = ["| " + " | ".join(head) + " |",
                 "|" + "|".join("---" if c == "benchmark" else "---:" for c in cols) + "|"]
        for row in self.rows():
            lines.append("| " + " | ".join(_md_value(c, row.get(c)) for c in cols) + " |")
        return "\n".join(lines) + "\n"


def _is_length(col: str) -> bool:
    return col.endswith("/len")


def _csv_value(v: Any) -> Any:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _md_value(col: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if col == "benchmark" or col in ("n", "dropped"):
        return str(v)
    if col == "seconds":
        return f"{v:.1f}"
    if _is_length(col):
        return f"{v:.1f}"
    return f"{100 * v:.1f}"


def _file_label(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def write_results(result: EvalResult, directory: str | Path, stem: str = "eval",
                  extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """Writes {stem}.json (metrics, timings and `extra`), {stem}.md, {stem}.csv and
    {stem}_records/<benchmark>.jsonl (one line per completion). Returns the paths."""
    directory = Path(directory)
    records_dir = directory / f"{stem}_records"
    records_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": directory / f"{stem}.json", "md": directory / f"{stem}.md",
             "csv": directory / f"{stem}.csv"}
    write_json(paths["json"], {"benchmarks": result.to_json(), **(extra or {})})
    paths["md"].write_text(result.to_markdown())
    paths["csv"].write_text(result.to_csv())
    for label, b in result.benchmarks.items():
        path = records_dir / f"{_file_label(label)}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for rec in b.records:
                f.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")
        paths[f"records/{label}"] = path
    return paths
