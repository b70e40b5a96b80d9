"""`python -m rlcot.main compile`: the update step and the sampling loop of every RL stage,
compiled ahead of time from abstract inputs, beside the memory planner's estimate; on the
local CPU devices here, and for a TPU topology where a Python with libtpu is available
($RLCOT_TPU_PYTHON, e.g. a separate virtualenv with `pip install "jax[tpu]" -e .`)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlcot import aot, memory, study

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "experiments" / "recipes.py"
FAST = {"xla_backend_optimization_level": 0}  # same memory analysis, compiles ~2x faster


def _recipe(variant: str):
    spec = importlib.util.spec_from_file_location("recipes", RECIPES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


@pytest.mark.parametrize("variant", ["qwen2.5_7b_v5p", "gemma3_4b_v5e", "qwen2.5_1.5b_gpu",
                                     "tiny"])
def test_every_recipe_resolves(variant):
    p = study.plan(_recipe(variant))
    assert [s.kind for s in p.stages] == ["rl"]


def test_compile_command_on_the_local_cpu_devices():
    lines = []
    reports = aot.compile_study(_recipe("tiny"), out=lines.append, compiler_options=FAST)
    r = reports["rl"]
    text = "\n".join(lines)
    assert "on 8 local cpu device(s)" in text and "mesh data=1 fsdp=8 tensor=1" in text
    assert "compiled update step per device" in text and "compiled sampling loop" in text
    # Rows are batch-sharded 8 ways: the per-device batch is an eighth of the whole.
    assert r["plan"].components["batch"] * 8 == 16 * 64 * 21
    for est, measured in ((r["plan"].update_program, r["update"]["peak"]),
                          (r["plan"].sampling_program, r["sampler"]["peak"])):
        assert 0.8 <= est / measured <= 1.2, (est, measured, text)


def test_the_planner_alone_for_a_device_count():
    lines = []
    reports = aot.compile_study(_recipe("qwen2.5_7b_v5p"), plan_devices=32, out=lines.append)
    plan = reports["rl"]["plan"]
    assert plan.mesh == memory.MeshShape(1, 8, 4)
    assert "update" not in reports["rl"]  # nothing compiled
    assert "32 devices (planner only)" in lines[0]
    # Qwen2.5-7B's float32 weights split 32 ways for training (norms and biases aside), 4 ways
    # (tensor) for the sampler.
    n = 4 * 7_615_616_512
    assert n / 32 < plan.components["params"] < 1.01 * n / 32
    assert n / 4 * 0.99 < plan.components["sampler"] < 1.01 * n / 4


def test_an_unknown_topology_is_refused_before_anything_loads():
    with pytest.raises(ValueError, match="unknown TPU topology 'v9-3'.*v5e-16"):
        aot.topology_devices("v9-3")


def test_a_stage_that_does_not_fit_fails_before_any_stage_runs(tmp_path, monkeypatch,
                                                                shared_toy_cache):
    from tests.loop.test_loop import tiny_config
    monkeypatch.setenv(memory.BUDGET_ENV, "0.001")
    with pytest.raises(ValueError, match=r"(?s)stage 'rl' \(rl\): this run needs .* GiB per "
                                         r"device, more than the budget of 0.00 GiB .*activations.*"
                                         r"settings that lower the peak"):
        study.run(tiny_config(1), tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # no stage started


def test_the_loop_checks_its_loaded_model_and_longest_prompt(monkeypatch):
    from rlcot import preflight, run_config
    from rlcot.models.presets import get_config
    rc = run_config.resolve(_recipe("tiny"))
    mesh = rc.mesh.make()
    short = preflight.check_run_memory(rc, get_config("tiny"), mesh, 16)
    long = preflight.check_run_memory(rc, get_config("tiny"), mesh, 200)
    assert long.components["kv_cache"] > short.components["kv_cache"]
    monkeypatch.setenv(memory.BUDGET_ENV, str(short.peak / 2**30))
    preflight.check_run_memory(rc, get_config("tiny"), mesh, 16)
    with pytest.raises(memory.DoesNotFitError, match="settings that lower the peak"):
        preflight.check_run_memory(rc, get_config("tiny"), mesh, 200)


TPU_PYTHON = os.environ.get("RLCOT_TPU_PYTHON")


@pytest.mark.skipif(not TPU_PYTHON and importlib.util.find_spec("libtpu") is None,
                    reason="no libtpu: set RLCOT_TPU_PYTHON to a Python with jax[tpu] installed")
def test_compile_for_a_tpu_topology_without_tpus():
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([TPU_PYTHON or sys.executable, "-m", "rlcot.main", "compile",
                          f"--config={RECIPES}:tiny", "--topology=v5e-4"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "v5e-4 (4 x TPU v5 lite)" in out.stdout
    assert "compiled update step per device" in out.stdout
