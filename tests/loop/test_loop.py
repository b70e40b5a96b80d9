"""End to end: the loop trains, writes its workdir, and resumes exactly (same numbers)."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import ml_collections as mlc
import numpy as np
import pytest

from rlcot.workdir import read_metrics

ROOT = Path(__file__).resolve().parents[2]


def tiny_config(steps: int = 3) -> mlc.ConfigDict:
    c = mlc.ConfigDict()
    c.seed = 0
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    c.model = dict(source="toyworld")
    c.world = dict(world=dict(corpus_size=2000),
                   pretrain=dict(steps=30, batch_size=16, short_rows=8))
    c.data = dict(dataset="toyworld", batch_prompts=4, template=dict(name="r1_zero", instruction=""))
    c.rollout = dict(num_samples=4, max_new_tokens=48)
    # Rewards that vary even for an untrained model, so every step has a learning signal.
    c.rewards = {"r1_tag_count": 1.0, "repetition_penalty": 1.0}
    c.advantage = dict(estimator="grpo")
    c.learner = dict(objective=dict(policy=dict(name="ppo_clip", eps_high=0.28)),
                    optimizer=dict(lr=3e-4), micro_batches=2, epochs=2)
    c.train = dict(steps=steps, checkpoint_every=1, reward_workers=0)
    c.eval = dict(datasets=("toyworld:test:8",), template="r1_zero", instruction="",
                  max_new_tokens=48, batch_size=8)
    return c


def _comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time/") and "seconds" not in k
             and not k.endswith("time_s") and not k.endswith("_s")} for r in rows]


@pytest.fixture(scope="module", autouse=True)
def toy_cache(tmp_path_factory):
    os.environ["RLCOT_TOYWORLD_CACHE"] = str(tmp_path_factory.mktemp("toycache"))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    from rlcot.loop import run
    workdir = tmp_path_factory.mktemp("full")
    summary = run(tiny_config(4), workdir)
    return workdir, summary


def test_workdir_is_self_describing(full_run):
    workdir, summary = full_run
    for name in ("config.json", "metrics.jsonl", "summary.json", "curves.png"):
        assert (workdir / name).is_file(), name
    assert list((workdir / "tensorboard").glob("events.*"))
    rows = read_metrics(workdir)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    train = rows[1:]
    assert all(r["opt_steps"] == 2 for r in train)  # 2 epochs per update, none skipped
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in train)
    shares = [v for k, v in train[-1].items() if k.endswith("_share")]
    assert 0.5 < sum(shares) <= 1.0 + 1e-6
    assert summary["steps"] == 4 and "toyworld:test/greedy/pass@1" in summary["eval_after"]
    assert json.loads((workdir / "summary.json").read_text())["eval_before"]


def test_resume_gives_the_same_numbers(full_run, tmp_path):
    from rlcot.loop import run
    workdir, _ = full_run
    run(tiny_config(2), tmp_path)        # "interrupted" after step 2 (checkpointed)
    run(tiny_config(4), tmp_path)        # the same command resumes at step 2
    a, b = read_metrics(workdir), read_metrics(tmp_path)
    # The interrupted run's step-2 row carries an end-of-run evaluation the full run did not
    # do at step 2; training numbers must agree everywhere.
    assert [r["step"] for r in b] == [0, 1, 2, 3, 4]
    train_keys = lambda r: {k: v for k, v in r.items() if not k.startswith("eval/")}  # noqa: E731
    assert _comparable(map(train_keys, a)) == _comparable(map(train_keys, b))
    assert _comparable([a[-1]]) == _comparable([b[-1]])


@pytest.mark.slow
def test_sigkill_at_a_random_step_resumes_exactly(full_run, tmp_path):
    """Kill -9 the real command line mid-run, start it again, compare with the full run."""
    workdir, _ = full_run
    exp = tmp_path / "exp.py"
    exp.write_text("from tests.loop.test_loop import tiny_config\n"
                   "def get_config(arg=None):\n    return tiny_config(4)\n")
    cmd = [sys.executable, "-m", "rlcot.main", "run", f"--config={exp}",
           f"--workdir={tmp_path / 'run'}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    kill_after = int(np.random.default_rng().integers(1, 4))  # a random step in 1..3
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        rows = read_metrics(tmp_path / "run") if (tmp_path / "run").exists() else []
        if rows and rows[-1]["step"] >= kill_after:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True).returncode == 0
    a, b = read_metrics(workdir), read_metrics(tmp_path / "run")
    assert _comparable(a) == _comparable(b)
