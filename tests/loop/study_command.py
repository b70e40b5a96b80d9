"""Runs a tiny study as the user does: `python -m rlcot.main run` in a process of its own, on
one CPU device (not the test session's 8 fake ones)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_tiny_study(experiment: str, workdir: Path, seed: int = 0) -> None:
    """experiments/EXPERIMENT.py:tiny into `workdir`; fails the test with the stderr's tail."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    cmd = [sys.executable, "-m", "rlcot.main", "run", "--config",
           f"experiments/{experiment}.py:tiny", "--workdir", str(workdir), f"--config.seed={seed}"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
