"""The preference study (experiments/preference.py), tiny: every arm (human labels -> reward
model -> PPO, AI judge -> labels -> reward model -> PPO, DPO on the human pairs) runs end to end
as the user's command; the sweep's table has a full row per method and the over-optimisation
plot is drawn."""

import dataclasses
import json

import numpy as np
import pytest

from rlcot.sweep.spec import load_experiment
from rlcot.workdir import read_metrics
from tests.loop.study_command import ROOT, run_tiny_study


pytestmark = pytest.mark.usefixtures("shared_toy_cache")


def test_tiny_preference_study_runs_every_arm_and_fills_the_tables(tmp_path):
    from rlcot.sweep.plot import plot_trajectories
    from rlcot.sweep.table import collect
    exp = load_experiment(ROOT / "experiments" / "preference.py")
    sweep = exp.get_sweep("tiny")
    [point] = sweep.points()
    workdir = tmp_path / point.name
    run_tiny_study("preference", workdir)
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["finished"]
    st = summary["stages"]
    assert list(summary["stage_order"]) == list(exp.toy().stage_order)
    # Human pairs: labels drawn from the true scores, the true scores written beside them.
    rows = [json.loads(x) for x in (workdir / "pairs_human" / "data.jsonl").read_text()
            .splitlines()]
    assert rows and all(r["chosen"].strip() != r["rejected"].strip() for r in rows)
    assert all(r["chosen_score"] == r["chosen_reference"] for r in rows)
    assert st["pairs_human"]["agreement"] == pytest.approx(
        np.mean([r["chosen_reference"] > r["rejected_reference"] for r in rows]))
    # The judge was trained on " N/10" rows and judged through the sampler.
    judge_rows = (workdir / "judge_data" / "data.jsonl").read_text().splitlines()
    assert all(json.loads(x)["completion"].endswith("/10") for x in judge_rows)
    assert st["pairs_ai"]["rows"] >= 1
    # Reward models: held-out metrics, the reference normalisation's statistics.
    for name in ("rm_human", "rm_ai"):
        card = json.loads((workdir / name / "reward_model.json").read_text())
        assert card["score_std"] > 0 and 0 <= st[name]["eval_after"]["accuracy"] <= 1
        assert "agreement" in st[name]["data_summary"]
    # PPO optimises the learned reward only; the true score is logged at weight 0.
    for name in ("ppo_human", "ppo_ai"):
        train = [r for r in read_metrics(workdir / name) if "loss" in r]
        assert [r["step"] for r in train] == [1, 2]
        for r in train:
            assert r["reward/total/mean"] == pytest.approx(r["reward/rm/mean"], abs=1e-6)
            assert np.isfinite(r["reward/true/mean"]) and "critic_grad_norm" in r
    table = {r.arm.name: r for r in collect(sweep, tmp_path)}
    assert list(table) == [name for name, _ in exp.ROWS]
    for name, row in table.items():
        for metric, cell in row.cells.items():
            assert cell.n == 1 and np.isfinite(cell.mean), (name, metric)
        stage = dict(exp.ROWS)[name]
        assert 0.0 <= st[stage]["eval_after"]["win_rate"] <= 1.0
    [png] = plot_trajectories(sweep, tmp_path)
    assert png.is_file()
    # The labellers' table reads the reward-model stages of the same runs.
    labels = collect(dataclasses.replace(exp.get_sweep("labels"), seeds=(0,)), tmp_path)
    assert [r.arm.name for r in labels] == [name for name, _, _ in exp.LABEL_ROWS]
    for row in labels:
        assert all(c.n == 1 and np.isfinite(c.mean) for c in row.cells.values()), row
