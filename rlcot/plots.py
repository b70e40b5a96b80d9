"""PNG plots of a run's metrics.jsonl (reward, accuracy, response length over steps)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from rlcot.workdir import read_metrics


def plot_metrics(workdir: str | Path, panels: Sequence[tuple[str, Sequence[str]]],
                 filename: str = "curves.png") -> Path | None:
    """One panel per (title, metric keys); each key drawn where it was logged. Returns the PNG
    path, or None when no listed metric was ever logged."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(workdir)
    panels = [(t, [k for k in keys if any(isinstance(r.get(k), (int, float)) for r in rows)])
              for t, keys in panels]
    panels = [(t, keys) for t, keys in panels if keys]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for k in keys:
            pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))]
            ax.plot(*zip(*pts), marker="o" if len(pts) < 12 else None, ms=3, label=k)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    return save_figure(fig, Path(workdir) / filename)


def save_figure(fig, path: Path) -> Path:
    """Lays out, writes (PNG, 110 dpi) and closes a matplotlib figure; returns the path."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
