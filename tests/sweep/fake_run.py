"""Stands in for `python -m rlcot.main run` in the sweep tests: takes the same arguments,
writes a run directory in the single-stage layout, and records how it was started.

    fake_run.py -m rlcot.main run --config=FILE[:ARG] --workdir=DIR --config.KEY=VALUE ...

train.log_every=7 fails; a workdir holding a file `interrupt_once` is left unfinished once.
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
time.sleep(0.4)
with open(workdir / "invocations.jsonl", "a") as f:
    f.write(json.dumps({"start": start, "end": time.time(), "config": args["config"],
                        "overrides": overrides, "cpus": sorted(os.sched_getaffinity(0)),
                        "omp": os.environ.get("OMP_NUM_THREADS"),
                        "jax_cache": os.environ.get("JAX_COMPILATION_CACHE_DIR")}) + "\n")
if overrides.get("train.log_every") == "7":
    print("boom", file=sys.stderr)
    sys.exit(3)
seed = int(overrides["seed"])
(workdir / "metrics.jsonl").write_text(
    "".join(json.dumps({"step": s, "reward/total/mean": 0.1 * s + seed}) + "\n" for s in (1, 2)))
if (workdir / "interrupt_once").exists():
    (workdir / "interrupt_once").unlink()
    sys.exit(-9 % 256)
acc = float(overrides.get("learner.optimizer.lr", "0.5")) + 0.01 * seed
(workdir / "summary.json").write_text(json.dumps(
    {"steps": 2, "seed": seed, "eval_after": {"toyworld:test/greedy/pass@1": acc}}))
