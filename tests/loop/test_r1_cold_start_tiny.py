"""The R1 study's three arms (experiments/r1_cold_start.py), tiny: each runs end to end (base
-> [cold start] -> rl) as its command, logs its mixing at every step, and fills its row of the
table."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlcot.sweep.spec import load_experiment
from rlcot.workdir import read_metrics

ROOT = Path(__file__).resolve().parents[2]
EVAL = "toyworld:test"

pytestmark = pytest.mark.usefixtures("shared_toy_cache")


def _experiment():
    return load_experiment(ROOT / "experiments" / "r1_cold_start.py")


def _run(arm: str, workdir: Path) -> dict:
    """The user's command, on one CPU device (not the session's 8 fake ones: sharding a
    0.44M-parameter model 8 ways only adds overhead); the base model is cached in the
    session's toy cache by the first arm and loaded by the others."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    cmd = [sys.executable, "-m", "rlcot.main", "run", "--config",
           f"experiments/r1_cold_start.py:{arm},tiny", "--workdir", str(workdir)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((workdir / "summary.json").read_text())


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("r1_cold_start")


# cold_lang (base -> cold sft -> rl with the language reward) runs every stage kind of the
# study in the default suite; the other arms with -m slow.
@pytest.mark.parametrize("arm", [pytest.param("zero", marks=pytest.mark.slow),
                                 pytest.param("cold", marks=pytest.mark.slow), "cold_lang"])
def test_tiny_arm(arm, root):
    from rlcot.sweep.table import collect
    exp = _experiment()
    workdir = root / arm / "seed_0"
    summary = _run(arm, workdir)
    assert summary["finished"]
    assert summary["stage_order"] == (["base", "rl"] if arm == "zero" else ["base", "cold", "rl"])
    if arm != "zero":
        cold = summary["stages"]["cold"]
        assert cold["examples"] == 32 and cold["steps"] == 5 and not any(cold["skipped"].values())
    rows = read_metrics(workdir / "rl")
    train = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train] == [1, 2]
    weight = 1.0 if arm == "cold_lang" else 0.0
    for r in train:
        # The language term is logged in every arm and rewarded only in cold_lang.
        want = (r["reward/accuracy/mean"] + 0.5 * r["reward/format/mean"]
                + weight * r["reward/language/mean"])
        assert r["reward/total/mean"] == pytest.approx(want, abs=1e-6)
        assert 0.0 <= r["reward/language/mixed_share"] <= r["reward/language/mixed_rate"] <= 1.0
    evals = [r for r in rows if f"eval/{EVAL}/greedy/pass@1" in r]
    assert [r["step"] for r in evals] == [0, 2]
    for kind in ("greedy", "sampled"):
        for key in ("second_language", "mixed_rate", "check_rate"):
            assert 0.0 <= summary["eval_after"][f"{EVAL}/{kind}/{key}"] <= 1.0
    # This arm's row of the sweep's table is complete (the other arms may run elsewhere).
    sweep = exp.get_sweep("tiny")
    assert [a.arg for a in sweep.arms] == ["zero,tiny", "cold,tiny", "cold_lang,tiny",
                                           "zero_lang,tiny"]
    row = next(r for r in collect(sweep, root) if r.arm.name == arm)
    assert all(c.n == 1 and np.isfinite(c.mean) for c in row.cells.values()), row.cells
