"""The self-describing workdir: config.json, metrics.jsonl, TensorBoard events, summary.json,
results.md."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)  # JSON has no NaN/inf; keep them visible rather than dropping the row
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def write_json(path: Path, obj: Any) -> None:
    """Atomic write (temp file + rename): a crash never leaves half a file. The temp file is
    named by the process id, so processes writing the same file (e.g. the study's files on
    every process of a multi-process run, same contents) never rename each other's."""
    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=True))
    os.replace(tmp, path)


def _tb_name(key: str) -> str:
    """TensorBoard tag names allow [A-Za-z0-9_./-]; benchmark labels carry ':' and '@'."""
    return key.replace(":", "_").replace("@", "_at_")


def read_metrics(workdir: str | Path) -> list[dict[str, Any]]:
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsWriter:
    """One JSON line per step in metrics.jsonl, mirrored to TensorBoard.

    On resume from step s, lines for steps > s (written after the checkpoint the run resumes
    from) are dropped, so the file reads as if the run had never been interrupted. active=False
    (processes other than 0 of a multi-process run): nothing is read or written.
    """

    def __init__(self, workdir: str | Path, resume_step: int | None = None,
                 tensorboard: bool = True, active: bool = True):
        self.active = active
        self._tb = None
        if not active:
            return
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.path = self.workdir / "metrics.jsonl"
        rows = read_metrics(self.workdir)
        keep = [r for r in rows if resume_step is not None and r.get("step", -1) <= resume_step]
        tmp = self.path.with_suffix(f".jsonl.{os.getpid()}.tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in keep))
        os.replace(tmp, self.path)
        self._file = open(self.path, "a")
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
                self._tb = SummaryWriter(str(self.workdir / "tensorboard"), purge_step=(
                    None if resume_step is None else resume_step + 1))
            except ImportError:  # TensorBoard logging is optional
                self._tb = None

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.active:
            return
        row = {"step": int(step), **_jsonable(dict(metrics))}
        self._file.write(json.dumps(row, sort_keys=True) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(_tb_name(k), v, step)

    def close(self) -> None:
        if not self.active:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()


class Progress:
    """A console progress line with rate, ETA and a few key metrics (tqdm)."""

    def __init__(self, total: int, initial: int = 0, keys: tuple[str, ...] = (),
                 desc: str = "rl", disable: bool | None = None):
        from tqdm import tqdm
        self.keys = keys
        self._bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                         disable=(not sys.stderr.isatty()) if disable is None else disable,
                         smoothing=0.3)
        self._start = time.time()

    def update(self, metrics: Mapping[str, Any], n: int = 1) -> None:
        shown = {}
        for k in self.keys:
            if k in metrics:
                v = metrics[k]
                shown[k.split("/")[-1]] = f"{v:.3g}" if isinstance(v, float) else v
        self._bar.set_postfix(shown, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()


class PhaseTimer:
    """Wall time per phase of a step: `with timer("rollout"): ...`; shares of the step."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    def __call__(self, phase: str):
        timer = self

        class _Phase:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[phase] = timer.seconds.get(phase, 0.0) + time.perf_counter() - self.t0

        return _Phase()

    def metrics(self) -> dict[str, float]:
        total = time.perf_counter() - self._start
        out = {"time/step_s": total}
        for phase, s in self.seconds.items():
            out[f"time/{phase}_s"] = s
            out[f"time/{phase}_share"] = s / total if total > 0 else 0.0
        return out


def summarize(workdir: Path, rc: Any, *, wall_s: float, resumed_from: int) -> dict[str, Any]:
    """summary.json: final numbers under stable names (documented in the README)."""
    rows = read_metrics(workdir)
    evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
    eval_keys = lambda r: {k[len("eval/"):]: v for k, v in r.items() if k.startswith("eval/")}  # noqa: E731
    train_rows = [r for r in rows if "loss" in r]
    phases: dict[str, float] = {}
    for r in train_rows:
        for k, v in r.items():
            if k.startswith("time/") and k.endswith("_s") and k != "time/step_s":
                phases[k[5:-2]] = phases.get(k[5:-2], 0.0) + v
    total = sum(phases.values()) or 1.0
    last = train_rows[-1] if train_rows else {}
    return {
        "steps": rc.train.steps, "seed": rc.seed, "resumed_from_step": resumed_from,
        "wall_time_s": round(wall_s, 2),
        "phase_seconds": {k: round(v, 2) for k, v in phases.items()},
        "phase_share": {k: round(v / total, 4) for k, v in phases.items()},
        "eval_before": eval_keys(evals[0]) if evals and evals[0]["step"] == 0 else {},
        "eval_after": eval_keys(evals[-1]) if evals else {},
        "final_train": {k: last[k] for k in ("reward/total/mean", "rollout/length_mean",
                                             "entropy_mean", "kl_ref_mean") if k in last},
        # Steps at which each rlcot.health condition held (a loud warning was due).
        "health": {k[len("health/"):]: int(sum(r.get(k, 0.0) for r in train_rows))
                   for k in dict.fromkeys(k for r in train_rows for k in r
                                          if k.startswith("health/"))},
    }




# Rows of results.md first, in this order (then every other eval metric, sorted).
HEADLINE = ("greedy/pass@1", "sampled/avg@{k}", "sampled/pass@{k}", "greedy/len", "sampled/len",
            "greedy/check_rate", "greedy/second_language", "greedy/format", "sampled/format")


def results_table(summary: dict[str, Any]) -> str:
    """results.md: each eval metric before and after RL (percentages for rates). Timings are
    left out, so a re-run of the same config and seed gives the same table."""
    before, after = summary["eval_before"], summary["eval_after"]
    keys = [k for k in dict.fromkeys([*before, *after]) if not k.endswith("/seconds")]
    labels = list(dict.fromkeys(k.split("/", 1)[0] for k in keys))
    ks = sorted({int(k.rsplit("@", 1)[1]) for k in keys if "pass@" in k or "avg@" in k} or {1})

    def order(key: str) -> tuple:
        label, metric = key.split("/", 1)
        heads = [h.format(k=ks[-1]) for h in HEADLINE]
        return (labels.index(label), heads.index(metric) if metric in heads else len(heads),
                metric)

    def fmt(key: str, v: Any) -> str:
        if v is None:
            return "-"
        rate = not key.endswith("/len")
        return f"{100 * v:.1f}" if rate else f"{v:.1f}"

    lines = ["| metric | before | after |", "|---|---:|---:|"]
    for key in sorted(keys, key=order):
        unit = "" if key.endswith("/len") else " (%)"
        lines.append(f"| {key}{unit} | {fmt(key, before.get(key))} | {fmt(key, after.get(key))} |")
    return "\n".join(lines)
