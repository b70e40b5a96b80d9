"""Stands in for `python -m rlcot.main run` in the sweep tests: takes the same arguments,
writes a run directory in the single-stage layout, and records how it was started.

    fake_run.py -m rlcot.main run --config=FILE[:ARG] --workdir=DIR --config.KEY=VALUE ...

train.log_every=7 fails; a workdir holding a file `interrupt_once` is left unfinished once
(killed), one holding `preempt_once` once with exit status 75 (preempted).
Each run marks itself running under ROOT/_running and records whether it saw another run
running at the same time; the first two runs of a root wait up to $FAKE_RUN_WAIT_S seconds
(default 0) for each other: a test of parallelism that does not depend on how fast
processes start on a loaded machine.
"""

import json
import os
import sys
import time
from pathlib import Path

args = dict(a[2:].split("=", 1) for a in sys.argv[4:])
workdir = Path(args.pop("workdir"))
workdir.mkdir(parents=True, exist_ok=True)
overrides = {k[len("config."):]: v for k, v in args.items() if k.startswith("config.")}
start = time.time()
running = workdir.parents[1] / "_running"
running.mkdir(exist_ok=True)
me = running / str(os.getpid())
me.touch()
with open(running.parent / "_started", "a") as f:  # one line per run, in start order
    f.write(f"{os.getpid()}\n")
first_two = len((running.parent / "_started").read_text().split()) <= 2
deadline = time.time() + (float(os.environ.get("FAKE_RUN_WAIT_S", "0")) if first_two else 0.0)
while not (sibling := any(p != me for p in running.iterdir())) and time.time() < deadline:
    time.sleep(0.02)
time.sleep(0.1)  # still running when a later sibling looks
me.unlink()
with open(workdir / "invocations.jsonl", "a") as f:
    f.write(json.dumps({"start": start, "end": time.time(), "sibling": sibling,
                        "config": args["config"],
                        "overrides": overrides, "cpus": sorted(os.sched_getaffinity(0)),
                        "omp": os.environ.get("OMP_NUM_THREADS"),
                        "jax_cache": os.environ.get("JAX_COMPILATION_CACHE_DIR")}) + "\n")
if overrides.get("train.log_every") == "7":
    print("boom", file=sys.stderr)
    sys.exit(3)
seed = int(overrides["seed"])
(workdir / "metrics.jsonl").write_text(
    "".join(json.dumps({"step": s, "reward/total/mean": 0.1 * s + seed}) + "\n" for s in (1, 2)))
if (workdir / "preempt_once").exists():  # stopped by SIGTERM: rlcot's exit status 75
    (workdir / "preempt_once").unlink()
    sys.exit(75)
if (workdir / "interrupt_once").exists():
    (workdir / "interrupt_once").unlink()
    sys.exit(-9 % 256)
acc = float(overrides.get("learner.optimizer.lr", "0.5")) + 0.01 * seed
(workdir / "summary.json").write_text(json.dumps(
    {"steps": 2, "seed": seed, "eval_after": {"toyworld:test/greedy/pass@1": acc}}))
