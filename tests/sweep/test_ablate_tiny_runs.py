"""The tiny ablation, run for real: arms that take the unusual paths (DAPO: dynamic sampling
and overlong shaping; PPO: a GAE critic), with `-m slow`. The default suite runs PPO with a GAE
critic end to end in the tiny preference study (tests/loop/test_preference_tiny.py)."""

from pathlib import Path

import numpy as np
import pytest

from rlcot.sweep.spec import load_experiment
from rlcot.workdir import read_metrics

ROOT = Path(__file__).resolve().parents[2]


def _experiment():
    return load_experiment(ROOT / "experiments" / "ablate_algorithms.py")


pytestmark = pytest.mark.usefixtures("shared_toy_cache")


def _run_arm(arm, workdir):
    from rlcot.study import run
    summary = run(_experiment().get_config(f"arm={arm},tiny"), workdir)
    rows = read_metrics(workdir / "rl")
    train = [r for r in rows if "loss" in r or "skipped_no_signal" in r]
    assert summary["finished"] and [r["step"] for r in rows][-1] == 2
    assert all(np.isfinite(r.get("loss", 0.0)) for r in train)
    assert "toyworld:test/greedy/pass@1" in summary["eval_after"]
    return rows


@pytest.mark.parametrize("arm", [pytest.param("dapo", marks=pytest.mark.slow),
                                 pytest.param("ppo_gae", marks=pytest.mark.slow)])
def test_tiny_arm_runs(arm, tmp_path):
    rows = _run_arm(arm, tmp_path)
    if arm == "dapo":
        assert all("rollout/rounds" in r for r in rows[1:])
    else:
        assert any(k.startswith("value") or k.startswith("critic") for k in rows[-1])


@pytest.mark.slow
@pytest.mark.parametrize("arm", ["grpo", "dr_grpo", "rloo", "reinforce_pp",
                                 "reinforce_pp_group", "gspo", "kimi"])
def test_every_tiny_arm_runs(arm, tmp_path):
    _run_arm(arm, tmp_path)
