"""The sweep command: exact commands per point, configs checked before any run, skip and
resume, N points at once on disjoint cores with a shared compilation cache, failures reported
without stopping the sweep."""

import json
import sys
import textwrap
from pathlib import Path

import pytest

from rlcot.sweep import runner, spec

FAKE_RUN = Path(__file__).with_name("fake_run.py")

EXPERIMENT = '''
from rlcot import run_config
from rlcot.sweep import spec


def get_config(arg=None):
    c = run_config.default_config()
    c.model.source = "preset:tiny"
    c.rewards = {"math_accuracy": 1.0}
    c.train.steps = 3 if arg != "short" else 1
    return c


def get_sweep(arg=None):
    table = spec.Table(metrics=(spec.Metric("acc", "eval_after.toyworld:test/greedy/pass@1"),))
    arms = spec.grid({"learner.optimizer.lr": LRS})
    arms += tuple(spec.Arm(a.name, a.overrides, arg=ARG) for a in EXTRA)
    return spec.Sweep(arms=arms, seeds=SEEDS, table=table)
'''


def _experiment(tmp_path, lrs=(0.5, 0.25), seeds=(0, 1), extra="()", arg=None):
    path = tmp_path / "exp.py"
    path.write_text(EXPERIMENT + textwrap.dedent(f"""
        LRS = {lrs!r}
        SEEDS = {seeds!r}
        EXTRA = {extra}
        ARG = {arg!r}
    """))
    return str(path)


def test_dry_run_commands_are_exact(tmp_path):
    exp = _experiment(tmp_path, lrs=(0.001,), seeds=(0, 1),
                      extra="(spec.Arm('short run', {'train.steps': 1}),)", arg="short")
    sweep = spec.load_sweep(exp + ":v")
    cmds = [runner.shell_command(exp + ":v", p, "runs/s") for p in sweep.points()]
    assert cmds == [
        f"python -m rlcot.main run --config={exp}:v --workdir=runs/s/lr=0.001/seed_0 "
        "--config.learner.optimizer.lr=0.001 --config.seed=0",
        f"python -m rlcot.main run --config={exp}:v --workdir=runs/s/lr=0.001/seed_1 "
        "--config.learner.optimizer.lr=0.001 --config.seed=1",
        f"python -m rlcot.main run --config={exp}:short --workdir=runs/s/short_run/seed_0 "
        "--config.train.steps=1 --config.seed=0",
        f"python -m rlcot.main run --config={exp}:short --workdir=runs/s/short_run/seed_1 "
        "--config.train.steps=1 --config.seed=1"]


def test_point_config_is_what_the_run_command_parses(tmp_path):
    exp = _experiment(tmp_path, lrs=(0.001,), extra="(spec.Arm('b', {'rollout.stop_strings': "
                      "('</answer>', 'x'), 'rollout.dynamic_sampling': True}),)", arg="short")
    sweep = spec.load_sweep(exp)
    c = runner.point_config(exp, sweep.points()[1])
    assert c.learner.optimizer.lr == 0.001 and c.seed == 1 and c.train.steps == 3
    c = runner.point_config(exp, sweep.points()[3])  # arm b at seed 1, its own variant
    assert c.rollout.stop_strings == ("</answer>", "x") and c.rollout.dynamic_sampling is True
    assert c.train.steps == 1 and isinstance(c.learner.optimizer.lr, float)


def test_a_key_not_in_the_config_fails_before_any_run(tmp_path):
    exp = _experiment(tmp_path, extra="(spec.Arm('bad', {'learner.optimizer.learning_rate': "
                      "0.1}),)")
    sweep = spec.load_sweep(exp)
    with pytest.raises(runner.SweepKeyError, match=r"sweep key 'learner.optimizer."
                       r"learning_rate' is not in the config of .*exp.py \(config.learner."
                       r"optimizer has \[.*'lr'"):
        runner.run_sweep(exp, sweep, tmp_path / "root", python=(sys.executable, str(FAKE_RUN)))
    assert not (tmp_path / "root").exists()  # nothing started
    exp = _experiment(tmp_path, extra="(spec.Arm('bad', {'learner.optimizer.lr': -1.0}),)")
    with pytest.raises(ValueError, match="sweep point bad/seed_0"):
        runner.check_points(exp, spec.load_sweep(exp))


def test_cpu_slots_divide_the_cores():
    assert runner.cpu_slots(2, [0, 1]) == [[0], [1]]
    assert runner.cpu_slots(2, [0, 1, 2, 3, 4]) == [[0, 1], [2, 3]]
    assert runner.cpu_slots(3, [4, 5]) == [[4], [5], [4]]
    env = runner.point_env(Path("/r"), [3, 4])
    assert env["OMP_NUM_THREADS"] == "2" and env["JAX_COMPILATION_CACHE_DIR"] == "/r/jax_cache"


def _invocations(root, name):
    path = root / name / "invocations.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_sweep_runs_in_parallel_skips_finished_resumes_unfinished_reports_failures(
        tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_RUN_WAIT_S", "10")  # each run waits for a sibling (see fake_run)
    exp = _experiment(tmp_path, lrs=(0.5, 0.25), seeds=(0, 1),
                      extra="(spec.Arm('broken', {'train.log_every': 7}),)")
    sweep = spec.load_sweep(exp)
    root = tmp_path / "root"
    finished = root / "lr=0.5" / "seed_0"
    finished.mkdir(parents=True)
    (finished / "summary.json").write_text('{"steps": 2}')
    (root / "lr=0.25" / "seed_1").mkdir(parents=True)
    (root / "lr=0.25" / "seed_1" / "interrupt_once").write_text("")
    lines = []
    failed = runner.run_sweep(exp, sweep, root, parallel=2, poll_s=0.05, echo=lines.append,
                              python=(sys.executable, str(FAKE_RUN)))
    # The interrupted point fails this time (killed before its summary), the broken arm always.
    assert sorted(p.name for p in failed) == ["broken/seed_0", "broken/seed_1", "lr=0.25/seed_1"]
    assert lines[0] == "[1/6] lr=0.5/seed_0: finished before, skipped"
    assert sum("FAILED (exit 3)" in x for x in lines) == 2
    assert any(x.startswith("[") and "lr=0.25/seed_1: FAILED (exit 247)" in x for x in lines)
    assert _invocations(root, "lr=0.5/seed_0") == []  # skipped
    runs = [_invocations(root, p.name) for p in sweep.points()[1:]]
    assert all(len(r) == 1 for r in runs)
    assert any(r[0]["sibling"] for r in runs)  # two at once
    assert {tuple(r[0]["cpus"]) for r in runs} == {(c,) for c in runner.cpu_slots(2)[0]} | {
        (c,) for c in runner.cpu_slots(2)[1]}
    assert all(r[0]["omp"] == "1" and r[0]["jax_cache"] == str((root / "jax_cache").resolve())
               for r in runs)
    first = runs[0][0]
    assert first["overrides"] == {"learner.optimizer.lr": "0.5", "seed": "1"}
    log = (root / "logs" / "broken.seed_0.log").read_text()
    assert "boom" in log and "--config.train.log_every=7" in log
    # Again: finished points skipped, the interrupted one resumed (run again), failures retried.
    lines.clear()
    failed = runner.run_sweep(exp, sweep, root, parallel=1, poll_s=0.05, echo=lines.append,
                              python=(sys.executable, str(FAKE_RUN)))
    assert len(failed) == 2
    assert "[4/6] lr=0.25/seed_1: unfinished, will resume" in lines
    assert len(_invocations(root, "lr=0.25/seed_1")) == 2
    assert len(_invocations(root, "lr=0.5/seed_1")) == 1
    assert runner.results.run_status(root / "lr=0.25" / "seed_1") == "finished"


def test_a_preempted_point_is_reported_as_stopped_and_resumed_next_time(tmp_path):
    exp = _experiment(tmp_path, lrs=(0.5,), seeds=(0,))
    sweep = spec.load_sweep(exp)
    root = tmp_path / "root"
    (root / "lr=0.5" / "seed_0").mkdir(parents=True)
    (root / "lr=0.5" / "seed_0" / "preempt_once").write_text("")
    lines = []
    failed = runner.run_sweep(exp, sweep, root, poll_s=0.05, echo=lines.append,
                              python=(sys.executable, str(FAKE_RUN)))
    assert [p.name for p in failed] == ["lr=0.5/seed_0"]  # not finished
    assert any("lr=0.5/seed_0: stopped (preempted, exit 75): the next sweep resumes it" in x
               for x in lines), lines
    assert not any("FAILED" in x for x in lines)
    lines.clear()
    assert runner.run_sweep(exp, sweep, root, poll_s=0.05, echo=lines.append,
                            python=(sys.executable, str(FAKE_RUN))) == []
    assert "[1/1] lr=0.5/seed_0: unfinished, will resume" in lines
