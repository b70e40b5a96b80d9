"""End to end: a tiny toy study (base sft -> rl) trains, writes its workdir, and resumes
exactly (same numbers); a three-stage study (sft -> rl -> rl) survives SIGKILL."""

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

from rlcot import stages
from rlcot.toyworld import base_stage
from rlcot.workdir import read_metrics

ROOT = Path(__file__).resolve().parents[2]


def tiny_config(steps: int = 3, second_rl_steps: int = 0) -> mlc.ConfigDict:
    """base (30 sft steps, cached) -> rl (`steps`) [-> rl2 (`second_rl_steps`)]."""
    c = mlc.ConfigDict()
    c.seed = 0
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    c.world = dict(corpus_size=2000)
    c.stage_order = ("base", "rl") + (("rl2",) if second_rl_steps else ())
    c.stages = dict(base=base_stage(
        optimizer=dict(warmup_steps=5),
        train=dict(steps=30, batch_size=16, short_rows=8, checkpoint_every=10, log_every=10)),
        rl=stages.defaults("rl"))
    if second_rl_steps:
        # The second RL stage continues from the first with other rewards and steps.
        c.stages.rl2 = stages.defaults("rl", train=dict(steps=second_rl_steps),
                                       rewards={"r1_tag_count": 1.0})
    c.model = dict(source="stage:base")
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


pytestmark = pytest.mark.usefixtures("isolated_toy_cache")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    from rlcot.study import run
    workdir = tmp_path_factory.mktemp("full")
    summary = run(tiny_config(4), workdir)
    return workdir, summary


def test_workdir_is_self_describing(full_run):
    workdir, summary = full_run
    assert summary["finished"] and summary["stage_order"] == ["base", "rl"]
    for name in ("config.json", "summary.json"):
        assert (workdir / name).is_file(), name
    rl = workdir / "rl"
    for name in ("config.json", "metrics.jsonl", "summary.json", "curves.png", "model.json",
                 "tokenizer.model"):
        assert (rl / name).is_file(), name
    assert list((rl / "tensorboard").glob("events.*"))
    rows = read_metrics(rl)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    train = rows[1:]
    assert all(r["opt_steps"] == 2 for r in train)  # 2 epochs per update, none skipped
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in train)
    shares = [v for k, v in train[-1].items() if k.endswith("_share")]
    assert 0.5 < sum(shares) <= 1.0 + 1e-6
    assert summary["steps"] == 4 and "toyworld:test/greedy/pass@1" in summary["eval_after"]
    assert json.loads((rl / "summary.json").read_text())["eval_before"]
    # The base stage is visible like any other: its loss curve, model card and checkpoint.
    base = read_metrics(workdir / "base")
    assert [r["step"] for r in base] == [10, 20, 30] and base[-1]["loss"] < base[0]["loss"]
    assert summary["stages"]["base"]["finished"] and not summary["stages"]["base"]["cached"]


def test_resume_gives_the_same_numbers(full_run, tmp_path):
    from rlcot.study import run
    workdir, _ = full_run
    run(tiny_config(2), tmp_path)        # "interrupted" after step 2 (checkpointed) ...
    (tmp_path / "rl" / "summary.json").unlink()  # ... before the stage was marked finished
    run(tiny_config(4), tmp_path)        # the same command resumes at step 2
    a, b = read_metrics(workdir / "rl"), read_metrics(tmp_path / "rl")
    # The interrupted run's step-2 row carries an end-of-run evaluation the full run did not
    # do at step 2; training numbers must agree everywhere.
    assert [r["step"] for r in b] == [0, 1, 2, 3, 4]
    train_keys = lambda r: {k: v for k, v in r.items() if not k.startswith("eval/")}  # noqa: E731
    assert _comparable(map(train_keys, a)) == _comparable(map(train_keys, b))
    assert _comparable([a[-1]]) == _comparable([b[-1]])
    # The base stage came from the cache the second time: the same parameters bit for bit.
    assert json.loads((tmp_path / "base" / "summary.json").read_text())["cached"]


def test_a_finished_stage_with_other_settings_is_not_reused(full_run, tmp_path):
    from rlcot.study import run
    workdir, _ = full_run
    c = tiny_config(5)
    with pytest.raises(ValueError, match="finished with other settings"):
        run(c, workdir)


def _params(stage_dir):
    from rlcot import sources
    model = sources.Resolver().load(f"workdir:{stage_dir}")
    return [np.asarray(x) for x in jax.tree.leaves(model.params)]


def _kill_and_resume(cmd, env, workdir, stage, kill_after):
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        rows = read_metrics(workdir / stage) if (workdir / stage).exists() else []
        if rows and rows[-1]["step"] >= kill_after:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_sigkill_inside_the_second_stage_resumes_exactly(tmp_path):
    """sft -> rl -> rl: kill -9 the real command line inside the second stage (the first rl),
    run it again, and compare every stage's metrics and parameters with an uninterrupted
    run."""
    exp = tmp_path / "exp.py"
    exp.write_text("from tests.loop.test_loop import tiny_config\n"
                   "def get_config(arg=None):\n    return tiny_config(3, second_rl_steps=2)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def cmd(d):
        return [sys.executable, "-m", "rlcot.main", "run", f"--config={exp}", f"--workdir={d}"]

    whole = subprocess.run(cmd(tmp_path / "whole"), cwd=ROOT, env=env, capture_output=True,
                           text=True)
    assert whole.returncode == 0, whole.stderr[-3000:]
    kill_after = int(np.random.default_rng().integers(1, 3))  # a random step in 1..2
    _kill_and_resume(cmd(tmp_path / "killed"), env, tmp_path / "killed", "rl", kill_after)
    for stage in ("base", "rl", "rl2"):
        a = read_metrics(tmp_path / "whole" / stage)
        b = read_metrics(tmp_path / "killed" / stage)
        assert _comparable(a) == _comparable(b), stage
        for x, y in zip(_params(tmp_path / "whole" / stage), _params(tmp_path / "killed" / stage)):
            assert np.array_equal(x, y), stage
