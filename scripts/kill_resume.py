"""Kill-and-resume cycles of a study command, each compared with an uninterrupted run.

    .venv/bin/python scripts/kill_resume.py --config=experiments/NAME.py[:VARIANT] --cycles=20 \
        [--root=DIR] [--seed=0] [--kills=1] [-- --config.KEY=VALUE ...]

First the command (`python -m rlcot.main run --config=... --workdir=...` plus the overrides
after `--`) runs once uninterrupted: the reference. Each cycle then runs it in a fresh workdir
and interrupts it `--kills` times, each at a random point: SIGKILL at a random time, SIGKILL as
soon as a checkpoint save is under way (an orbax `*.orbax-checkpoint-tmp-*` directory exists,
after a random delay), or SIGTERM / SIGINT at a random time (a graceful stop: exit status 75,
rlcot.preempt); then it runs the same command again to the end. Every stage's metrics.jsonl
(timing keys left out), the arrays of its last checkpoint (parameters, optimizer state,
counters), a generate stage's data.jsonl and the stage order must equal the reference's. One
line per cycle, then how many cycles match exactly; the exit status is 0 only if all do.

Runs share a JAX compilation cache and a toy-world cache under --root (unless
JAX_COMPILATION_CACHE_DIR / RLCOT_TOYWORLD_CACHE are set), so after the reference each run
mostly trains instead of compiling.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TMP_MARK = ".orbax-checkpoint-tmp"
MODES = ("save", "kill", "term", "save", "kill", "int")  # cycled: every kind in 6 cycles
EXIT_PREEMPTED = 75


def _command(config: str, workdir: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "rlcot.main", "run", f"--config={config}",
            f"--workdir={workdir}", *extra]


def _saving(workdir: Path) -> bool:
    """Whether a checkpoint save is under way (orbax writes into a temporary directory)."""
    try:
        stages = list(os.scandir(workdir))
    except FileNotFoundError:
        return False
    for st in stages:
        try:
            if any(TMP_MARK in e.name for e in os.scandir(os.path.join(st.path, "checkpoints"))):
                return True
        except (FileNotFoundError, NotADirectoryError):
            continue
    return False


def _progress(workdir: Path) -> str:
    """Where a study stood: the last metrics row of its last stage with any."""
    try:
        if json.loads((workdir / "summary.json").read_text()).get("finished"):
            return "after the study finished"
    except (FileNotFoundError, json.JSONDecodeError):
        pass
    where = "before any metrics"
    for stage in _stage_order(workdir):
        path = workdir / stage / "metrics.jsonl"
        lines = [x for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
        if lines:
            done = " (stage finished)" if (workdir / stage / "summary.json").is_file() else ""
            where = f"last row {stage} step {json.loads(lines[-1])['step']}{done}"
    return where


def _stage_order(workdir: Path) -> list[str]:
    path = workdir / "summary.json"
    try:
        return list(json.loads(path.read_text()).get("stage_order") or [])
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def _interrupt(cmd: list[str], env: dict, workdir: Path, mode: str, delay: float,
               log) -> tuple[str, bool, float]:
    """Runs cmd and interrupts it once: (what happened in words, whether the signal was sent
    before the run ended, seconds it ran)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log)
    t0 = time.perf_counter()
    sig = {"kill": signal.SIGKILL, "save": signal.SIGKILL, "term": signal.SIGTERM,
           "int": signal.SIGINT}[mode]
    while proc.poll() is None and time.perf_counter() - t0 < delay:
        time.sleep(0.005)
    if mode == "save":  # then the first save under way
        while proc.poll() is None and not _saving(workdir):
            time.sleep(0.001)
    if proc.poll() is not None:
        return (f"finished before the {mode} point (rc {proc.returncode})", False,
                time.perf_counter() - t0)
    at = time.perf_counter() - t0
    proc.send_signal(sig)
    rc = proc.wait()
    mid_save = _saving(workdir)  # the temporary directory of an unfinished save is still there
    what = {"save": "SIGKILL in a save", "kill": "SIGKILL", "term": "SIGTERM",
            "int": "SIGINT"}[mode]
    status = "exit 75 (stopped after a checkpoint)" if rc == EXIT_PREEMPTED else f"rc {rc}"
    return (f"{what} at {at:5.1f}s -> {status}, {_progress(workdir)}"
            + ("; a save was cut short" if mid_save else ""), True, at)


def _comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time/") and "seconds" not in k
             and not k.endswith("_s")} for r in rows]


def _checkpoint_arrays(stage_dir: Path) -> tuple[int | None, dict]:
    import numpy as np
    import orbax.checkpoint as ocp
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.ERROR)
    ckpts = stage_dir / "checkpoints"
    steps = sorted(int(p.name) for p in ckpts.iterdir()
                   if p.name.isdigit()) if ckpts.is_dir() else []
    if not steps:
        return None, {}
    path = ckpts / str(steps[-1]) / "state"
    checkpointer = ocp.PyTreeCheckpointer()
    keys = list(checkpointer.metadata(path).item_metadata.keys())
    args = {k: ocp.RestoreArgs(restore_type=np.ndarray) for k in keys}
    return steps[-1], checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))


def differences(ref: Path, run: Path) -> list[str]:
    """What differs between two study directories (empty: identical results)."""
    out = []
    order = _stage_order(ref)
    if _stage_order(run) != order:
        return [f"stage order {_stage_order(run)} != {order}"]
    if not json.loads((run / "summary.json").read_text()).get("finished"):
        return ["the study did not finish"]
    for stage in order:
        a, b = ref / stage, run / stage
        rows = [_comparable([json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()
                             if x.strip()]) if (d / "metrics.jsonl").is_file() else []
                for d in (a, b)]
        if rows[0] != rows[1]:
            diff = next((i for i, (x, y) in enumerate(zip(*rows)) if x != y), min(map(len, rows)))
            out.append(f"{stage}: metrics.jsonl differs from row {diff}")
        if (a / "data.jsonl").is_file() and (a / "data.jsonl").read_bytes() != (
                b / "data.jsonl").read_bytes():
            out.append(f"{stage}: data.jsonl differs")
        (sa, xa), (sb, xb) = _checkpoint_arrays(a), _checkpoint_arrays(b)
        if sorted(xa) != sorted(xb):  # a cached sft stage keeps only its policy: compare that
            xa, xb = ({k: v for k, v in x.items() if k.startswith(".params")} for x in (xa, xb))
        if sa != sb or sorted(xa) != sorted(xb) or not xa:
            out.append(f"{stage}: last checkpoint step {sb} / {len(xb)} arrays, reference "
                       f"{sa} / {len(xa)}")
            continue
        bad = [k for k in xa if xa[k].dtype != xb[k].dtype or xa[k].shape != xb[k].shape
               or xa[k].tobytes() != xb[k].tobytes()]
        if bad:
            out.append(f"{stage}: {len(bad)} of {len(xa)} checkpoint arrays differ "
                       f"(e.g. {bad[0]})")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="experiments/NAME.py[:VARIANT]")
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--kills", type=int, default=1, help="interruptions per cycle")
    ap.add_argument("--root", default=None, help="where the runs go (default: a temp dir)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the kill points")
    args = ap.parse_args(argv)
    root = Path(args.root or tempfile.mkdtemp(prefix="kill_resume_")).absolute()
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(root / "jax_cache"))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    env.setdefault("RLCOT_TOYWORLD_CACHE", str(root / "toy_cache"))
    rng = random.Random(args.seed)

    def run_to_end(workdir: Path, log) -> tuple[int, float]:
        t0 = time.perf_counter()
        rc = subprocess.run(_command(args.config, workdir, extra), cwd=ROOT, env=env,
                            stdout=log, stderr=log).returncode
        return rc, time.perf_counter() - t0

    print(f"kill_resume: {args.cycles} cycles of {args.kills} interruption(s) of "
          f"`rlcot.main run --config={args.config} {' '.join(extra)}` under {root}", flush=True)
    ref = root / "reference"
    with open(root / "reference.log", "w") as log:
        run_to_end(ref, log)  # fills the compilation and toy caches
        rc, ref_s = run_to_end(root / "reference_again", log)  # the time of a warm run
    if rc != 0 or not json.loads((ref / "summary.json").read_text()).get("finished"):
        print(f"the uninterrupted run failed (rc {rc}); see {root / 'reference.log'}")
        return 2
    same = differences(ref, root / "reference_again")
    print(f"reference: stages {_stage_order(ref)}, {ref_s:.1f}s per warm run; a second "
          f"uninterrupted run {'is identical' if not same else 'DIFFERS: ' + '; '.join(same)}",
          flush=True)
    matched, cut_saves, graceful = 0, 0, 0
    t_all = time.perf_counter()
    for c in range(args.cycles):
        workdir = root / f"cycle{c:03d}"
        events = []
        with open(root / f"cycle{c:03d}.log", "w") as log:
            for k in range(args.kills):
                mode = MODES[(c * args.kills + k) % len(MODES)]
                for _ in range(3):
                    delay = rng.uniform(0.0, 0.7 if mode == "save" else 0.95) * ref_s
                    event, sent, took = _interrupt(_command(args.config, workdir, extra), env,
                                                   workdir, mode, delay, log)
                    if sent or k:
                        break
                    # The run ended before the point (runs got faster): again, aiming earlier.
                    ref_s = min(ref_s, 0.9 * took)
                    shutil.rmtree(workdir)
                events.append(event)
            rc, resume_s = run_to_end(workdir, log)
        diff = differences(ref, workdir) if rc == 0 else [f"the resumed run failed (rc {rc})"]
        matched += not diff
        cut_saves += sum("save was cut short" in e for e in events)
        graceful += sum("exit 75" in e for e in events)
        print(f"cycle {c + 1:2d}/{args.cycles}: {'; '.join(events)}; resumed in "
              f"{resume_s:.1f}s: {'identical' if not diff else 'DIFFERENT: ' + '; '.join(diff)}",
              flush=True)
    print(f"{matched} of {args.cycles} cycles identical to the uninterrupted run "
          f"({cut_saves} kills cut a checkpoint save short, {graceful} graceful stops exited "
          f"with status 75; {time.perf_counter() - t_all:.0f}s)")
    return 0 if matched == args.cycles else 1


if __name__ == "__main__":
    sys.exit(main())
