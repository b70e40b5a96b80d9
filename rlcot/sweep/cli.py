"""The sweep, table and plot commands of rlcot.main."""

from __future__ import annotations

from pathlib import Path

from rlcot.sweep import runner
from rlcot.sweep.spec import load_sweep


def sweep_command(config_spec: str, root: str, *, parallel: int = 1,
                  dry_run: bool = False) -> int:
    """Exit status: 0 when every point finished, 1 when any failed."""
    sweep = load_sweep(config_spec)
    points = sweep.points()
    if dry_run:
        runner.check_points(config_spec, sweep)  # a bad key fails here, before any output
        for p in points:
            print(runner.shell_command(config_spec, p, root))
        return 0
    print(f"sweep {config_spec}: {len(sweep.running_arms)} arms x {len(sweep.seeds)} seeds = "
          f"{len(points)} points under {root}, {parallel} at a time", flush=True)
    failed = runner.run_sweep(config_spec, sweep, root, parallel=parallel,
                              echo=lambda s: print(s, flush=True))
    if failed:
        print(f"{len(failed)} point(s) did not finish: {', '.join(p.name for p in failed)}")
        return 1
    return 0


def table_command(config_spec: str, root: str) -> int:
    from rlcot.sweep.table import write_table
    sweep = load_sweep(config_spec)
    md, csv_path, _ = write_table(sweep, root)
    print(md.read_text(), end="")
    print(f"wrote {md} and {csv_path}")
    return 0


def plot_command(config_spec: str, root: str) -> int:
    from rlcot.sweep.plot import plot_bars, plot_curves, plot_scatter, plot_trajectories
    from rlcot.sweep.table import collect
    sweep = load_sweep(config_spec)
    Path(root).mkdir(parents=True, exist_ok=True)
    rows = collect(sweep, root)
    written = [p for p in (plot_curves(sweep, root), plot_bars(sweep, rows, root),
                           plot_scatter(sweep, rows, root)) if p is not None]
    written += plot_trajectories(sweep, root)
    print("wrote " + (", ".join(map(str, written)) if written else "nothing (no finished runs)"))
    return 0
