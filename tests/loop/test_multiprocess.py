"""A real multi-process RL run on one machine: 2 JAX CPU processes with 4 devices each, joined
with jax.distributed over loopback (gloo collectives), run the tiny RL stage (random-init
preset model, toy world) for 3 steps, stopped after the third rollout and resumed from the
checkpoint of step 2 (orbax, written and read by both processes); it must give the metrics and parameters of one process with 8 devices, and each
process must have sampled and scored only its own block of every global batch.

Tolerance. The two layouts run the same programs on the same (data, fsdp, tensor) = (1, 8, 1)
mesh; only the order in which an all-reduce adds the 8 devices' partial sums differs (in one
process, XLA's CPU collectives; across processes, gloo). So everything computed before any
cross-device float sum is exact: sampled tokens, rewards, rollout and eval metrics are compared
for equality. Means and norms over the batch (loss, entropy, grad norm, ...) differ by float32
rounding: rtol 1e-5. Parameters: Adam divides each gradient element by its own magnitude, so an
element whose gradient is a near-cancelling sum can move by up to ~lr per step on a rounding
difference; the bound is max |dtheta| <= 0.1 lr, and mean |dtheta| <= 1e-4 lr (a wrong row, a
dropped process or shuffled data moves nearly every element by ~lr). Measured on 2 cores of an
AMD EPYC: max 0.021 lr, mean 2.7e-6 lr, 0.09% of elements differ by more than 1e-4 lr.
8 prompts x 2 samples: the groups split evenly over the 8 devices (rlcot.distributed.check_run
says why that matters on CPU).
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("multiprocess_worker.py")
LR = 1e-3  # multiprocess_worker.tiny_rl_config's learning rate
STEPS, STOP_AT = 3, 3
EXACT = ("reward/", "rollout/", "eval/", "health/", "skipped_no_signal")
TIMEOUT_S = 420


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
    """The test's environment (RLCOT_TOYWORLD_CACHE included) for CPU processes of `devices`
    devices each. No persistent compilation cache: the one 2-process run tried with it hung
    in a gloo collective (jax 0.10.2, before runs dispatched synchronously; not tried since)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
                         f"--xla_backend_optimization_level=0")
    return env


def _launch(out: Path, processes: int, *extra: str) -> list[subprocess.Popen]:
    """Starts one run (`processes` processes, 8 devices in all); logs in out/logP."""
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    procs = []
    for p in range(processes):
        cmd = [sys.executable, str(WORKER), "--workdir", str(out / "w"), "--params",
               str(out / "params.npz"), "--steps", str(STEPS), *extra]
        if processes > 1:
            cmd += ["--num_processes", str(processes), "--process_id", str(p), "--port", str(port)]
        log = open(out / f"log{p}", "a")
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=_env(8 // processes),
                                      stdout=log, stderr=subprocess.STDOUT))
        log.close()
    return procs


def _wait(runs: dict[str, tuple[Path, list[subprocess.Popen], int]], deadline: float) -> None:
    """Waits for every process; the first that exits with another status than expected (or
    the deadline) kills all of them and fails the test with its log's end (never hangs)."""
    pending = {(name, i) for name, (_, procs, _) in runs.items() for i in range(len(procs))}
    failure = None
    while pending and failure is None:
        for name, i in sorted(pending):
            out, procs, want = runs[name]
            rc = procs[i].poll()
            if rc is None:
                continue
            pending.discard((name, i))
            if rc != want:
                tail = (out / f"log{i}").read_text()[-3000:]
                failure = f"{name} process {i} exited with {rc} (expected {want}):\n{tail}"
        if pending and time.monotonic() > deadline:
            failure = f"timed out after {TIMEOUT_S}s waiting for {sorted(pending)}"
        time.sleep(0.2)
    if failure:
        for _, procs, _ in runs.values():
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        pytest.fail(failure)


def _pair(root: Path, *variant: str) -> tuple[Path, Path]:
    """(one process x 8 devices, two processes x 4 devices stopped and resumed) directories,
    both runs at once (their compiles overlap their waits)."""
    sys.path.insert(0, str(WORKER.parent))
    from multiprocess_worker import tiny_rl_config
    sys.path.pop(0)
    from rlcot.toyworld.corpus import WorldConfig
    from rlcot.toyworld.tokenizer import world_tokenizer
    # Train the toy tokenizer here, once: the processes read it from the cache.
    world_tokenizer(WorldConfig(**tiny_rl_config(STEPS).world))
    one, two = root / "one", root / "two"
    t0 = time.monotonic()
    _wait({"1x8": (one, _launch(one, 1, *variant), 0),
           "2x4": (two, _launch(two, 2, "--stop_at", str(STOP_AT), *variant), 0)},
          time.monotonic() + TIMEOUT_S)
    print(f"multi-process runs {variant}: {time.monotonic() - t0:.1f}s")
    return one, two


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_toy_cache):
    return _pair(tmp_path_factory.mktemp("multiprocess"))


def _rows(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _numbers(row: dict) -> dict:
    return {k: v for k, v in row.items()
            if not (k.startswith("time/") or k.endswith("_s") or "seconds" in k)}


def _same_metrics(one: Path, two: Path, first_step: int = 0, abs_tol: float = 1e-6,
                  skip: tuple[tuple[int, str], ...] = ()) -> None:
    """Two runs' metrics.jsonl rows: the same steps and keys, numbers equal (EXACT) or within
    float32 rounding (see the module docstring); skip: (step, key) not compared."""
    a, b = _rows(one / "w"), _rows(two / "w")
    assert ([r["step"] for r in a] == [r["step"] for r in b]
            == list(range(first_step, STEPS + 1)))
    assert any(r.get("grad_norm", 0.0) > 0 for r in a)  # the policy did learn something
    for ra, rb in zip(a, b):
        ra, rb = _numbers(ra), _numbers(rb)
        assert ra.keys() == rb.keys(), set(ra) ^ set(rb)
        for k, va in ra.items():
            if (ra["step"], k) in skip:
                continue
            if k.startswith(EXACT) or not isinstance(va, float):
                assert rb[k] == va, (ra["step"], k, va, rb[k])
            else:
                assert math.isclose(rb[k], va, rel_tol=1e-5, abs_tol=abs_tol), (ra["step"], k,
                                                                                va, rb[k])


def test_two_processes_log_what_one_process_logs(runs):
    _same_metrics(*runs)


def _same_params(one: Path, two: Path) -> None:
    pa, pb = np.load(one / "params.npz"), np.load(two / "params.npz")
    assert sorted(pa.files) == sorted(pb.files)
    diff = np.concatenate([np.abs(pa[k] - pb[k]).ravel() for k in pa.files])
    print(f"parameters: max |diff| {diff.max() / LR:.4f} lr, mean {diff.mean() / LR:.2e} lr, "
          f"{np.mean(diff > 1e-4 * LR):.2%} of elements over 1e-4 lr")
    assert diff.max() <= 0.1 * LR, diff.max()
    assert diff.mean() <= 1e-4 * LR, diff.mean()


def test_two_processes_train_the_same_parameters(runs):
    _same_params(*runs)


def test_each_process_scores_its_own_block_of_the_global_batch(runs):
    one, two = runs
    [single] = [json.loads((one / "params.npz.rows0.json").read_text())]
    per_process = []
    for p in range(2):
        scored = json.loads((two / f"params.npz.rows{p}.json").read_text())
        assert len(scored) == STEPS + 1
        per_process.append(scored[:STOP_AT - 1] + scored[STOP_AT:])  # the abandoned step, redone
        assert scored[STOP_AT - 1] == scored[STOP_AT]
    assert len(single) == STEPS
    for step, batch in enumerate(single):
        assert batch["rows"] == 16
        assert [per_process[p][step]["rows"] for p in range(2)] == [8, 8]
        assert (per_process[0][step]["prompts"] + per_process[1][step]["prompts"]
                == batch["prompts"]), step


def test_process_zero_writes_the_files_and_the_run_resumed(runs):
    _, two = runs
    w = two / "w"
    summary = json.loads((w / "summary.json").read_text())
    assert summary["resumed_from_step"] == STOP_AT - 1 and summary["steps"] == STEPS
    for name in ("config.json", "results.md", "eval/step000000.md", f"eval/step{STEPS:06d}.md"):
        assert (w / name).is_file(), name
    assert sorted(p.name for p in (w / "checkpoints").iterdir()) == ["2", "3"]
    assert not list(w.rglob("*.tmp"))


@pytest.mark.slow
def test_value_model_lora_and_tensor_parallelism_across_processes(tmp_path, shared_toy_cache):
    """PPO with a value model (GAE advantages, the critic's own optimizer), LoRA adapters on
    the frozen base and a (data, fsdp, tensor) = (1, 4, 2) mesh, so that each process's 4
    devices hold 2 fsdp shards x 2 tensor shards of the weights: 2 x 4 devices, stopped and
    resumed, against 1 x 8, as the GRPO tests compare. No KL term (see tiny_rl_config)."""
    one, two = _pair(tmp_path, "--variant", "critic_lora_tp")
    _same_metrics(one, two)
    rows = _rows(two / "w")
    assert any(r.get("critic_grad_norm", 0.0) > 0 for r in rows)
    _same_params(one, two)  # the adapters (the train state's params with LoRA)
    card = json.loads((two / "w" / "model.json").read_text())
    assert card["lora"]["rank"] == 4  # process 0 marked the stage's model card


@pytest.mark.slow
def test_sft_stage_across_processes(tmp_path, shared_toy_cache):
    """The `sft` stage kind (rlcot.stages.sft: toy corpus, random-init model, 16 rows a step in
    2 micro-batches, evaluated at the end) as 2 x 4 devices, stopped after step 2 and resumed,
    against 1 x 8: each process collates only its block of each batch's rows, process 0
    writes the files; same losses (rtol 1e-5), parameters and evaluation table."""
    one, two = _pair(tmp_path, "--variant", "sft", "--stop_at", "2")
    _same_metrics(one, two, first_step=1)
    _same_params(one, two)
    w = two / "w"
    assert sorted(p.name for p in (w / "checkpoints").iterdir()) == ["2", "3"]
    tables = [(d / "w" / "eval" / f"step{STEPS:06d}.md").read_text().splitlines()
              for d in (one, two)]
    strip = lambda t: [line.rsplit("|", 2)[0] for line in t]  # noqa: E731 (not the seconds)
    assert strip(tables[0]) == strip(tables[1])
    assert not list(w.rglob("*.tmp"))


@pytest.mark.slow
def test_dpo_stage_across_processes(tmp_path, shared_toy_cache):
    """The `dpo` stage kind (rlcot.stages.dpo: 64 toy-corpus preference pairs, 16 a step in 2
    micro-batches; the reference log-probs computed on the global mesh and gathered) as
    2 x 4 devices against 1 x 8, uninterrupted (the dpo stage has no stop check). Its rewards
    are beta x (sequence log-prob - reference's), differences of sums of ~360 nats, so their
    float32 rounding is ~1e-6 absolute (abs_tol 1e-5); at step 1 the policy is its reference
    and each margin is that rounding alone, so the sign test (rewards/accuracies) is not
    compared there."""
    one, two = _pair(tmp_path, "--variant", "dpo", "--stop_at", "0")
    _same_metrics(one, two, first_step=1, abs_tol=1e-5, skip=((1, "rewards/accuracies"),))
    _same_params(one, two)
    for d in (one, two):
        assert (d / "w" / "reference_logps.npz").is_file()
    ref = [np.load(d / "w" / "reference_logps.npz") for d in (one, two)]
    np.testing.assert_allclose(ref[0]["chosen"], ref[1]["chosen"], rtol=1e-5)
    np.testing.assert_allclose(ref[0]["rejected"], ref[1]["rejected"], rtol=1e-5)
    tables = [(d / "w" / "eval" / f"step{STEPS:06d}.md").read_text().splitlines()
              for d in (one, two)]
    strip = lambda t: [line.rsplit("|", 2)[0] for line in t]  # noqa: E731 (not the seconds)
    assert strip(tables[0]) == strip(tables[1])


def _wait_for(paths: list[Path], procs: list[subprocess.Popen], deadline: float) -> None:
    while not all(p.exists() for p in paths):
        assert all(proc.poll() is None for proc in procs), [proc.poll() for proc in procs]
        assert time.monotonic() < deadline, f"timed out waiting for {paths}"
        time.sleep(0.1)


@pytest.mark.slow
def test_sigterm_to_every_process_stops_all_at_one_step_and_a_relaunch_resumes(runs, tmp_path):
    """A SIGTERM to each process (as a TPU pod maintenance event sends), while both are in the
    second step's rollout: both stop at step 1 (the step is abandoned), both write the
    step-1 checkpoint (orbax, together: checkpoint_every is 10, so the stop writes it) and
    exit with EXIT_PREEMPTED; rlcot.preempt's handler took the signal (not jax's own
    preemption notifier, see rlcot.distributed.initialize). A relaunch resumes from step 1 and
    ends with the numbers of the uninterrupted one-process run."""
    from rlcot import preempt
    one, _ = runs
    out = tmp_path / "sigterm"
    t0 = time.monotonic()
    deadline = t0 + TIMEOUT_S
    procs = _launch(out, 2, "--signal_at", "2", "--checkpoint_every", "10")
    try:
        _wait_for([out / f"params.npz.ready{p}" for p in range(2)], procs, deadline)
    except AssertionError:
        for proc in procs:
            proc.kill()
        raise
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    _wait({"sigterm": (out, procs, preempt.EXIT_PREEMPTED)}, deadline)
    t_stop = time.monotonic() - t0
    stopped = [json.loads((out / f"params.npz.stopped{p}.json").read_text()) for p in range(2)]
    assert stopped == [{"step": 1, "reason": "SIGTERM"}] * 2
    w = out / "w"
    assert sorted(p.name for p in (w / "checkpoints").iterdir()) == ["1"]
    assert [r["step"] for r in _rows(w)] == [0, 1]
    for p in range(2):
        text = (out / f"log{p}").read_text()
        assert "SIGTERM: stopping at the next step boundary" in text, p
        assert "SIGTERM caught" not in text, p  # jax's preemption notifier would log this
    _wait({"relaunch": (out, _launch(out, 2, "--checkpoint_every", "10"), 0)},
          time.monotonic() + TIMEOUT_S)
    print(f"SIGTERM run stopped after {t_stop:.1f}s, relaunch done after "
          f"{time.monotonic() - t0:.1f}s")
    assert json.loads((w / "summary.json").read_text())["resumed_from_step"] == 1
    assert sorted(p.name for p in (w / "checkpoints").iterdir()) == ["1", str(STEPS)]
    _same_metrics(one, out)
    _same_params(one, out)


def _run_joined(code: str, local_devices: int) -> list[tuple[int, str, str]]:
    """`python -c code` in 2 processes that rlcot.main's environment variables join
    (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); (returncode, stdout,
    stderr) of each, both ended (killed if still running on the way out)."""
    port = _free_port()
    procs = []
    for p in range(2):
        env = _env(local_devices)
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(p))
        procs.append(subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            results.append((proc.returncode, out, err))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


def test_main_joins_the_processes_named_by_the_environment(tmp_path):
    """rlcot.main starts jax.distributed from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
    JAX_PROCESS_ID before anything asks jax about its devices (asking first would start a
    one-process backend, after which jax.distributed cannot start)."""
    code = ("from absl import flags; import rlcot.main as m; flags.FLAGS(['main']); "
            "m._maybe_init_distributed(); import jax; "
            "print(jax.process_count(), jax.process_index(), jax.device_count())")
    outs = []
    for returncode, out, err in _run_joined(code, local_devices=2):
        assert returncode == 0, err[-2000:]
        outs.append(out.split()[-3:])
    assert outs == [["2", "0", "4"], ["2", "1", "4"]]


def test_a_sigterm_before_rlcots_handlers_is_not_swallowed_by_jax(tmp_path):
    """jax.distributed's preemption service (on by default) installs a SIGTERM handler that
    only logs "SIGTERM caught": a SIGTERM between joining and rlcot.preempt's handlers was
    lost and the run went on to its end. rlcot.distributed.initialize turns that service off:
    such a SIGTERM now ends the process as SIGTERM does (rlcot.main installs its handlers
    before joining, so there it requests a stop)."""
    code = ("from absl import flags; import rlcot.main as m; flags.FLAGS(['main']); "
            "m._maybe_init_distributed(); import jax, os, signal, time; "
            "from rlcot import distributed; distributed.sync('joined'); "
            "print(jax.process_count(), flush=True); os.kill(os.getpid(), signal.SIGTERM); "
            "time.sleep(20); print('survived', flush=True)")
    for returncode, out, err in _run_joined(code, local_devices=1):
        # Ended by its SIGTERM, or aborted by jax once the other process (process 0 holds the
        # coordination service) has ended: either way it did not go on.
        assert "survived" not in out and returncode != 0, (out, err[-2000:])
        assert "SIGTERM caught" not in err
