"""A sweep's plots: curves over steps per arm (mean over finished seeds, a band of +- one
standard error), a bar chart of the table's main metric with standard-error bars, and, when
the table names a scatter, one point per arm and seed of two metrics (a frontier); and the
table's trajectories, one per-step metric against another along training."""

from __future__ import annotations

import fnmatch
import math
from pathlib import Path
from typing import Sequence

from rlcot.plots import save_figure
from rlcot.sweep import results
from rlcot.sweep.spec import Sweep
from rlcot.sweep.stats import mean_sem
from rlcot.sweep.table import Row

# (title, per-step key; '*' matches within a key, the first matching key in sorted order wins)
PANELS = (("reward (total, train)", "reward/total/mean"),
          ("held-out greedy pass@1", "eval/*/greedy/pass@1"),
          ("response length (tokens)", "rollout/length_mean"),
          ("KL to reference", "kl_ref_mean"),
          ("entropy", "entropy_mean"))


def _key(pattern: str, runs: list[list[dict]]) -> str | None:
    keys = sorted({k for rows in runs for r in rows for k in r})
    found = [k for k in keys if fnmatch.fnmatchcase(k, pattern)]
    return found[0] if found else None


def seed_band(runs: list[list[dict]], key: str) -> list[tuple[int, float, float, int]]:
    """(step, mean, sem, n) over the runs that logged `key` at each step."""
    by_step: dict[int, list[float]] = {}
    for rows in runs:
        for r in rows:
            v = r.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                by_step.setdefault(int(r["step"]), []).append(float(v))
    return [(s, *mean_sem(vs), len(vs)) for s, vs in sorted(by_step.items())]


def plot_curves(sweep: Sweep, root: str | Path, panels: Sequence[tuple[str, str]] | None = None,
                filename: str = "curves.png") -> Path | None:
    """One panel per (title, key pattern) that some run logged (default: PANELS, then the
    table's own panels), five to a row."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(root)
    panels = (*PANELS, *sweep.table.panels) if panels is None else panels
    curves = {}
    for arm in sweep.table_arms:
        runs = []
        for seed in sweep.seeds:
            d = sweep.run_dir(root, arm, seed)
            if results.run_status(d) == results.FINISHED:
                runs.append(results.read_curves(d, results.read_summary(d),
                                                arm.stage or sweep.table.stage))
        if any(runs):
            curves[arm.name] = runs
    all_runs = [rows for runs in curves.values() for rows in runs]
    shown = [(t, k) for t, p in panels if (k := _key(p, all_runs))]
    if not shown:
        return None
    cols = min(5, len(shown))
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(shown):]:
        ax.set_visible(False)
    colors = plt.get_cmap("tab10")
    for ax, (title, key) in zip(axes.flat, shown):
        for i, (name, runs) in enumerate(curves.items()):
            band = seed_band(runs, key)
            if not band:
                continue
            steps, mean, sem, _ = zip(*band)
            lo = [m - (s if math.isfinite(s) else 0.0) for m, s in zip(mean, sem)]
            hi = [m + (s if math.isfinite(s) else 0.0) for m, s in zip(mean, sem)]
            c = colors(i % 10)
            ax.plot(steps, mean, color=c, marker="o" if len(steps) < 12 else None, ms=3,
                    label=f"{name} (n={len(runs)})")
            ax.fill_between(steps, lo, hi, color=c, alpha=0.2, linewidth=0)
        ax.set_title(f"{title}\n{key}", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return save_figure(fig, root / filename)


def plot_bars(sweep: Sweep, rows: list[Row], root: str | Path,
              filename: str = "bars.png") -> Path | None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = sweep.table.main_metric
    cells = [(r.arm.name, r.cells[m.name]) for r in rows]
    if not any(c.n for _, c in cells):
        return None
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(cells) + 1.5), 3.8))
    xs = range(len(cells))
    means = [c.mean * m.scale if c.n else 0.0 for _, c in cells]
    errs = [c.sem * m.scale if c.n > 1 else 0.0 for _, c in cells]
    ax.bar(xs, means, yerr=errs, capsize=4, color="tab:blue", alpha=0.8)
    for x, (_, c) in zip(xs, cells):
        if c.n < c.declared:
            ax.annotate(f"n={c.n}/{c.declared}", (x, 0), ha="center", va="bottom", fontsize=7,
                        color="tab:red")
    ax.set_xticks(list(xs), [name for name, _ in cells], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(m.name)
    ax.set_title(f"{m.name}: mean ± s.e. over seeds", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, Path(root) / filename)



def plot_scatter(sweep: Sweep, rows: list[Row], root: str | Path,
                 filename: str = "scatter.png") -> Path | None:
    """The table's scatter (x metric, y metric): one small marker per arm and seed, and each
    arm's mean with standard-error bars on both axes. None without a scatter or values."""
    if sweep.table.scatter is None:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_name = {m.name: m for m in sweep.table.metrics}
    mx, my = (by_name[n] for n in sweep.table.scatter)
    fig, ax = plt.subplots(figsize=(6.0, 4.5))
    colors = plt.get_cmap("tab10")
    drawn = False
    for i, r in enumerate(rows):
        # Seeds that have both values, paired by seed (Cell.values drop the missing ones).
        pairs = [(x, y) for x, y in zip(_per_seed(r, mx.name), _per_seed(r, my.name))
                 if x is not None and y is not None]
        if not pairs:
            continue
        drawn = True
        xs = [x * mx.scale for x, _ in pairs]
        ys = [y * my.scale for _, y in pairs]
        c = colors(i % 10)
        ax.scatter(xs, ys, color=c, s=14, alpha=0.5)
        (x0, sx), (y0, sy) = mean_sem(xs), mean_sem(ys)
        ax.errorbar([x0], [y0], xerr=[sx if math.isfinite(sx) else 0.0],
                    yerr=[sy if math.isfinite(sy) else 0.0], color=c, marker="o", ms=7,
                    capsize=3, label=f"{r.arm.name} (n={len(pairs)})")
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel(mx.name)
    ax.set_ylabel(my.name)
    ax.set_title(f"{my.name} against {mx.name}: one point per seed, mean ± s.e.", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, Path(root) / filename)


def _per_seed(row: Row, metric: str) -> list[float | None]:
    return [row.per_seed.get(s, {}).get(metric) for s in sorted(row.per_seed)]


def _paired(rows: list[dict], x: str, y: str) -> dict[int, tuple[float, float]]:
    out = {}
    for r in rows:
        vx, vy = r.get(x), r.get(y)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for v in (vx, vy)):
            out[int(r["step"])] = (float(vx), float(vy))
    return out


def plot_trajectories(sweep: Sweep, root: str | Path) -> list[Path]:
    """One figure per table trajectory, trajectory_<n>.png: for each (label, stage) curve, the
    seeds' mean (x, y) at each step (a line from the first step's point, marked) and each
    seed's own line, faint."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(root)
    written = []
    colors = plt.get_cmap("tab10")
    for n, tr in enumerate(sweep.table.trajectories):
        fig, ax = plt.subplots(figsize=(6.0, 4.5))
        drawn = False
        for i, (label, stage) in enumerate(tr.curves):
            for arm in sweep.running_arms:
                seeds = []
                for seed in sweep.seeds:
                    d = sweep.run_dir(root, arm, seed)
                    if results.run_status(d) != results.FINISHED:
                        continue
                    summary = results.read_summary(d)
                    if stage not in (summary.get("stage_order") or ()):
                        continue
                    pts = _paired(results.read_curves(d, summary, stage), tr.x, tr.y)
                    if pts:
                        seeds.append(pts)
                if not seeds:
                    continue
                drawn = True
                c = colors((i + len(tr.curves) * sweep.running_arms.index(arm)) % 10)
                for pts in seeds:
                    xs, ys = zip(*(pts[s] for s in sorted(pts)))
                    ax.plot(xs, ys, color=c, alpha=0.25, linewidth=0.8)
                steps = sorted(set.intersection(*(set(p) for p in seeds)))
                mx = [sum(p[s][0] for p in seeds) / len(seeds) for s in steps]
                my = [sum(p[s][1] for p in seeds) / len(seeds) for s in steps]
                name = label if len(sweep.running_arms) == 1 else f"{arm.name}: {label}"
                ax.plot(mx, my, color=c, linewidth=2, label=f"{name} (n={len(seeds)})")
                if mx:
                    ax.plot(mx[:1], my[:1], color=c, marker="o", ms=6)
                    ax.plot(mx[-1:], my[-1:], color=c, marker="s", ms=6)
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xlabel(tr.x)
        ax.set_ylabel(tr.y)
        ax.set_title(f"{tr.title}\n(mean over seeds per step: o first step, s last; faint: "
                     f"each seed)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        written.append(save_figure(fig, root / f"trajectory_{n}.png"))
    return written
