"""A sweep's table: per arm and metric, mean +- standard error over the declared seeds that
finished, the number of seeds behind each cell, and what is missing. A cell over fewer seeds
than declared says so ("n=2/3") rather than passing for a full one. Written as table.md and
table.csv; the same runs give byte-identical files."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from pathlib import Path

from rlcot.sweep import results
from rlcot.sweep.spec import Arm, Metric, Sweep, format_value
from rlcot.sweep.stats import mean_sem, welch_t_test


@dataclasses.dataclass(frozen=True)
class Cell:
    values: tuple[float, ...]  # per finished seed that has the metric, in seed order
    declared: int
    p_value: float = math.nan  # Welch's t-test against the baseline row (nan: none)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return mean_sem(self.values)[0] if self.values else math.nan

    @property
    def sem(self) -> float:
        return mean_sem(self.values)[1] if self.values else math.nan


@dataclasses.dataclass(frozen=True)
class Row:
    arm: Arm
    status: dict[int, str]  # seed -> finished / unfinished / missing
    cells: dict[str, Cell]
    per_seed: dict[int, dict[str, float | None]] = dataclasses.field(default_factory=dict)

    @property
    def finished(self) -> int:
        return sum(s == results.FINISHED for s in self.status.values())


def collect(sweep: Sweep, root: str | Path) -> list[Row]:
    root = Path(root)
    table = sweep.table
    rows = []
    for arm in sweep.table_arms:
        status, per_seed = {}, {}
        for seed in sweep.seeds:
            run_dir = sweep.run_dir(root, arm, seed)
            status[seed] = results.run_status(run_dir)
            if status[seed] == results.FINISHED:
                per_seed[seed] = results.run_values(run_dir, table, arm.stage)
        cells = {m.name: Cell(tuple(v[m.name] for v in per_seed.values()
                                    if v[m.name] is not None), len(sweep.seeds))
                 for m in table.metrics}
        rows.append(Row(arm, status, cells, per_seed))
    if table.baseline is not None:
        base = next(r for r in rows if r.arm.name == table.baseline)
        for r in rows:
            if r is not base:
                for name, c in r.cells.items():
                    p = welch_t_test(c.values, base.cells[name].values)[2]
                    r.cells[name] = dataclasses.replace(c, p_value=p)
    return rows


def _num(x: float, digits: int) -> str:
    return "nan" if math.isnan(x) else f"{x:.{digits}f}"


def format_cell(c: Cell, m: Metric) -> str:
    if c.n == 0:
        return f"— (n=0/{c.declared})"
    mean, sem = c.mean * m.scale, c.sem * m.scale
    text = _num(mean, m.digits) if c.n == 1 else f"{_num(mean, m.digits)} ± {_num(sem, m.digits)}"
    return text if c.n == c.declared else f"{text} (n={c.n}/{c.declared}) ⚠"


def _format_p(p: float) -> str:
    if math.isnan(p):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _status_note(r: Row) -> str:
    notes = [f"seed {s} {st}" for s, st in r.status.items() if st != results.FINISHED]
    return "; ".join(notes)


def markdown(sweep: Sweep, rows: list[Row]) -> str:
    t = sweep.table
    keys = list(t.row_keys)
    head = ["arm", *keys, *(m.name for m in t.metrics), "seeds", "not finished"]
    align = ["---", *("---" for _ in keys), *("---:" for _ in t.metrics), "---:", "---"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for r in rows:
        vals = [format_value(r.arm.overrides[k]) if k in r.arm.overrides else "" for k in keys]
        cells = [format_cell(r.cells[m.name], m) for m in t.metrics]
        lines.append("| " + " | ".join([r.arm.name, *vals, *cells,
                                        f"{r.finished}/{len(sweep.seeds)}",
                                        _status_note(r)]) + " |")
    how = ("final values" if t.select == "final"
           else f"values at each run's best step by {t.select}")
    lines += ["", f"Mean ± standard error over seeds {list(sweep.seeds)} ({how}); "
                  "⚠ marks a cell over fewer seeds than declared (n=finished/declared)."]
    if t.baseline is not None:
        lines += ["", f"Welch's t-test against {t.baseline} (two-sided p):", "",
                  "| arm | " + " | ".join(m.name for m in t.metrics) + " |",
                  "|---|" + "|".join("---:" for _ in t.metrics) + "|"]
        for r in rows:
            if r.arm.name != t.baseline:
                lines.append("| " + " | ".join([r.arm.name, *(_format_p(r.cells[m.name].p_value)
                                                              for m in t.metrics)]) + " |")
    return "\n".join(lines) + "\n"


def to_csv(sweep: Sweep, rows: list[Row]) -> str:
    """Long form: one line per (arm, metric), raw values (unscaled) at full precision."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["arm", "metric", "source", "mean", "sem", "n", "declared", "p_value",
                "values", "not_finished"])
    for r in rows:
        for m in sweep.table.metrics:
            c = r.cells[m.name]
            w.writerow([r.arm.name, m.name, m.path or f"{m.reduce}({m.curve})", repr(c.mean),
                        repr(c.sem), c.n, c.declared, repr(c.p_value),
                        ";".join(repr(v) for v in c.values), _status_note(r)])
    return buf.getvalue()


def write_table(sweep: Sweep, root: str | Path) -> tuple[Path, Path, list[Row]]:
    root = Path(root)
    rows = collect(sweep, root)
    md, csv_path = root / "table.md", root / "table.csv"
    root.mkdir(parents=True, exist_ok=True)
    md.write_text(markdown(sweep, rows))
    csv_path.write_text(to_csv(sweep, rows))
    return md, csv_path, rows
