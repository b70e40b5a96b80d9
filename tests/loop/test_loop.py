"""End to end: a tiny toy study (base sft -> rl) trains, writes its workdir, and resumes
exactly (same numbers) after a stop request and a damaged checkpoint; a three-stage study
(sft -> rl -> rl) survives SIGKILL; stops inside sft and generate stages resume exactly."""

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


def short_base(c: mlc.ConfigDict) -> mlc.ConfigDict:
    """`c` with its base stage cut to 10 steps in one padded width (tiny_config's trains 30):
    for tests that need a base model to start from, not a trained one. They all get the same
    cache entry, which the test session trains once (conftest.py's shared_toy_cache)."""
    c.stages.base.train.update(steps=10, short_rows=0, length_multiple=128, log_every=5,
                               checkpoint_every=10)
    return c


def _comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time/") and "seconds" not in k
             and not k.endswith("time_s") and not k.endswith("_s")} for r in rows]


# A fresh cache, not the session's shared one: full_run must train its base stage itself (not
# cached) and the resumed run must then find it cached.
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


def _signal_at(path, step, sig=signal.SIGTERM):
    """A thread that sends this process `sig` once metrics.jsonl at `path` reaches `step`."""
    import threading

    def watch():
        deadline = time.time() + 300
        while time.time() < deadline:
            if path.is_file() and any(json.loads(x)["step"] >= step
                                      for x in path.read_text().splitlines() if x.strip()):
                # To the main thread, where rlcot.preempt's handler runs (a process-directed
                # signal may land on any thread). The SIGABRTs once suspected here were XLA:CPU
                # aborting a deadlocked collective, signal or not (rlcot.distributed.settle).
                signal.pthread_kill(threading.main_thread().ident, sig)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_stopped_and_damaged_resumes_to_the_same_numbers(full_run, tmp_path, caplog):
    """SIGTERM inside the rl stage: it stops at a step boundary with a checkpoint and raises
    Preempted (the command's exit status 75), unfinished. Its latest checkpoint is then
    truncated: the same call falls back to the one before, says why, and ends with the
    uninterrupted run's metrics and parameters."""
    from rlcot import preempt
    from rlcot.study import run
    workdir, _ = full_run
    watcher = _signal_at(tmp_path / "rl" / "metrics.jsonl", 2)
    with pytest.raises(preempt.Preempted, match="stage rl stopped at step [23] on SIGTERM"):
        run(tiny_config(4), tmp_path)
    watcher.join()
    rl = tmp_path / "rl"
    assert not (rl / "summary.json").exists()
    assert not json.loads((tmp_path / "summary.json").read_text())["finished"]
    steps = sorted(int(p.name) for p in (rl / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] in (2, 3) and read_metrics(rl)[-1]["step"] == steps[-1]
    data = max((p for p in (rl / "checkpoints" / str(steps[-1]) / "state").rglob("*")
                if p.is_file()), key=lambda p: p.stat().st_size)
    data.write_bytes(data.read_bytes()[:64])  # a truncated array file
    with caplog.at_level("WARNING", logger="rlcot.checkpoint"):
        run(tiny_config(4), tmp_path)  # the same call resumes
    assert f"checkpoints/{steps[-1]} is damaged: state/" in caplog.text
    assert f"resuming from step {steps[-1] - 1}" in caplog.text
    assert (rl / "checkpoints.damaged" / str(steps[-1])).is_dir()
    a, b = read_metrics(workdir / "rl"), read_metrics(rl)
    assert [r["step"] for r in b] == [0, 1, 2, 3, 4]
    assert _comparable(a) == _comparable(b)
    for x, y in zip(_params(workdir / "rl"), _params(rl)):
        assert np.array_equal(x, y)
    # The packed passes' shapes compiled so far (they steer later plans) came back with the
    # checkpoint: the resumed run ends knowing what the uninterrupted one knew.
    shapes = _pack_shapes(workdir / "rl" / "checkpoints" / "4")
    assert shapes["update"] and shapes["logprobs"]
    assert _pack_shapes(rl / "checkpoints" / "4") == shapes
    summary = json.loads((rl / "summary.json").read_text())
    assert summary["resumed_from_step"] == steps[-1] - 1 and "health" in summary
    # The base stage came from the cache the second time: the same parameters bit for bit.
    assert json.loads((tmp_path / "base" / "summary.json").read_text())["cached"]


def test_a_finished_stage_with_other_settings_is_not_reused(full_run, tmp_path):
    from rlcot.study import run
    workdir, _ = full_run
    c = tiny_config(5)
    with pytest.raises(ValueError, match="finished with other settings"):
        run(c, workdir)


def _pack_shapes(checkpoint: Path) -> dict:
    """The `pack_shapes` of a checkpoint's metadata (orbax's JSON item)."""
    for p in (checkpoint / "meta").rglob("*"):
        if p.is_file():
            try:
                meta = json.loads(p.read_text())
            except ValueError:
                continue
            if isinstance(meta, dict) and "pack_shapes" in meta:
                return meta["pack_shapes"]
    raise AssertionError(f"no pack_shapes in {checkpoint}/meta")


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


@pytest.mark.slow
def test_a_stopped_sft_stage_resumes_exactly(full_run, tmp_path, monkeypatch):
    """SIGTERM inside the base (sft) stage after its 13th step, between two logged rows (every
    10 steps): the checkpoint at step 13 keeps the losses of steps 11-13, so the resumed stage
    logs the same means at step 20."""
    from rlcot import preempt, sft
    from rlcot.study import run
    workdir, _ = full_run
    c = tiny_config(1)
    c.stage_order = ("base",)
    del c.stages["rl"]
    c.stages.base.train.cache = False
    make = sft.make_train_step

    def make_counting(*args, **kwargs):
        step_fn, calls = make(*args, **kwargs), []

        def counted(*a):
            out = step_fn(*a)
            calls.append(1)
            if len(calls) == 13:
                os.kill(os.getpid(), signal.SIGTERM)
            return out
        return counted

    monkeypatch.setattr(sft, "make_train_step", make_counting)
    with pytest.raises(preempt.Preempted, match="stage base stopped at step 13 on SIGTERM"):
        run(c, tmp_path)
    monkeypatch.setattr(sft, "make_train_step", make)
    steps = sorted(int(p.name) for p in (tmp_path / "base" / "checkpoints").iterdir()
                   if p.name.isdigit())
    assert steps == [10, 13] and [r["step"] for r in read_metrics(tmp_path / "base")] == [10]
    run(c, tmp_path)
    a, b = read_metrics(workdir / "base"), read_metrics(tmp_path / "base")
    assert _comparable(a) == _comparable(b) and [r["step"] for r in b] == [10, 20, 30]
    for x, y in zip(_params(workdir / "base"), _params(tmp_path / "base")):
        assert np.array_equal(x, y)
    assert json.loads((tmp_path / "base" / "summary.json").read_text())["resumed_from_step"] == 13


@pytest.mark.slow
def test_kill_resume_script(tmp_path):
    """scripts/kill_resume.py: two cycles (a kill during a checkpoint save, a SIGKILL at a
    random time) on the three-stage study, both identical to the uninterrupted run."""
    exp = tmp_path / "exp.py"
    exp.write_text("from tests.loop.test_loop import tiny_config\n"
                   "def get_config(arg=None):\n    return tiny_config(3, second_rl_steps=2)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RLCOT_TOYWORLD_CACHE",
                                                            "JAX_COMPILATION_CACHE_DIR")}
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "kill_resume.py"),
                          f"--config={exp}", "--cycles=2", f"--root={tmp_path / 'runs'}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert "a second uninterrupted run is identical" in lines[1]
    assert lines[2].startswith("cycle  1/2: SIGKILL in a save") and lines[3].startswith(
        "cycle  2/2: SIGKILL at")
    assert lines[-1].startswith("2 of 2 cycles identical to the uninterrupted run")
