"""Synthetic run directories for the table, plot and runner tests."""

import json
from pathlib import Path

EVAL = "toyworld:test"


def write_run(run_dir: Path, *, acc: float | None, length: float = 50.0,
              curve: list[tuple[int, float]] = (), finished: bool | None = True,
              stages: bool = False, wall: float = 60.0) -> None:
    """A finished (or unfinished) run. stages: the study layout (rl/ stage + top summary);
    else the single-stage layout. finished None: summary.json without a 'finished' key."""
    run_dir.mkdir(parents=True, exist_ok=True)
    after = {} if acc is None else {f"{EVAL}/greedy/pass@1": acc}
    after[f"{EVAL}/greedy/len"] = length
    summary = {"steps": len(curve), "seed": 0, "wall_time_s": wall, "eval_after": after,
               "final_train": {"reward/total/mean": acc or 0.0}}
    rows = [{"step": s, "reward/total/mean": v, "rollout/length_mean": 40.0 + s,
             "rollout/tokens_sampled": 1000.0, f"eval/{EVAL}/greedy/pass@1": v}
            for s, v in curve]
    stage_dir = run_dir / "rl" if stages else run_dir
    stage_dir.mkdir(exist_ok=True)
    (stage_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if finished is False and not stages:
        return  # a single-stage run writes summary.json only at its end
    if stages:
        (stage_dir / "summary.json").write_text(json.dumps(summary))
        summary = {**summary, "stage_order": ["sft", "rl"], "stages": {"rl": summary},
                   "finished": bool(finished)}
    elif finished is True:
        summary["finished"] = True
    (run_dir / "summary.json").write_text(json.dumps(summary))
