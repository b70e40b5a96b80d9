"""The Kimi long2short study (experiments/kimi_long2short.py), tiny: every stage (long SFT,
RL, length-penalty RL, shortest rejection sampling + SFT, DPO pairs + DPO, the short model,
merge, eval) runs end to end as the user's command, and the sweep's table has a full row for
every method."""

import json

import numpy as np
import pytest

from rlcot.sweep.spec import load_experiment
from rlcot.workdir import read_metrics
from tests.loop.study_command import ROOT, run_tiny_study

EVAL = "toyworld:test"

pytestmark = pytest.mark.usefixtures("shared_toy_cache")


def test_tiny_study_runs_every_method_and_fills_the_table(tmp_path):
    from rlcot.sweep.table import collect
    exp = load_experiment(ROOT / "experiments" / "kimi_long2short.py")
    sweep = exp.get_sweep("tiny")
    [point] = sweep.points()
    workdir = tmp_path / point.name
    run_tiny_study("kimi_long2short", workdir)
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["finished"]
    st = summary["stages"]
    assert list(summary["stage_order"]) == list(exp.toy().stage_order)
    # The long-CoT SFT data repeats checks: its rows are longer than the short model's.
    assert st["long"]["examples"] == 16 and st["short"]["examples"] == 16
    # Rejection sampling keeps one row per prompt, pairs one pair per prompt.
    assert st["rs_data"]["select"] == "shortest_correct" and st["rs_data"]["rows"] >= 1
    assert st["pairs"]["select"] == "pairs" and st["pairs"]["rows"] >= 1
    rows = [json.loads(x) for x in (workdir / "pairs" / "data.jsonl").read_text().splitlines()]
    assert all(r["chosen"].strip() != r["rejected"].strip() for r in rows)
    assert all(r["chosen_tokens"] <= r["rejected_tokens"] or not r["rejected_correct"]
               for r in rows)
    # Each length-penalty stage adds Kimi's length term at its weight to the others.
    for w in exp.LENGTH_WEIGHTS:
        train = [r for r in read_metrics(workdir / exp._length_stage(w)) if "loss" in r]
        assert [r["step"] for r in train] == [1, 2]
        for r in train:
            want = (r["reward/accuracy/mean"] + 0.5 * r["reward/format/mean"]
                    + w * r["reward/length/mean"])
            assert r["reward/total/mean"] == pytest.approx(want, abs=1e-6)
    # Every method's row: one seed, every metric present (tokens per correct needs a
    # correct answer, which a tiny model may not give: that cell may be empty, nothing else).
    table = {r.arm.name: r for r in collect(sweep, tmp_path)}
    assert list(table) == [name for name, _ in exp.ROWS]
    for name, row in table.items():
        for metric, cell in row.cells.items():
            if "per correct" not in metric:
                assert cell.n == 1 and np.isfinite(cell.mean), (name, metric)
        assert row.per_seed[0]["tokens, greedy"] == \
            st[dict(exp.ROWS)[name]]["eval_after"][f"{EVAL}/greedy/len"]
