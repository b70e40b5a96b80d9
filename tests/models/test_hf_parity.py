"""rlcot logits equal Hugging Face transformers' on the same weights (fp32, padded batch)."""

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).parent))
from golden_specs import FAMILIES, make_inputs, make_weights  # noqa: E402

from rlcot.models import hf  # noqa: E402
from rlcot.models import transformer as tr  # noqa: E402

GOLDEN = Path(__file__).parent / "golden"


def write_checkpoint(family: str, directory: Path) -> np.ndarray:
    """Writes config.json + model.safetensors from the golden spec; returns expected logits."""
    golden = np.load(GOLDEN / f"{family}.npz")
    specs = json.loads(str(golden["specs"]))
    weights = make_weights(family, specs)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(FAMILIES[family]))
    return golden["logits"]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def loaded(request, tmp_path_factory):
    family = request.param
    ckpt = tmp_path_factory.mktemp(family)
    expected = write_checkpoint(family, ckpt)
    cfg, graphdef, params = hf.load_hf(ckpt)
    return family, ckpt, expected, cfg, graphdef, params


def test_logits_match_transformers(loaded):
    family, _, expected, cfg, graphdef, params = loaded
    tokens, valid, positions = make_inputs(cfg.vocab_size)
    logits, _ = jax.jit(tr.forward, static_argnums=0)(graphdef, params, tokens, positions, valid)
    logits = np.asarray(logits)
    diff = np.abs(np.where(valid[..., None], logits - expected, 0)).max()
    assert diff <= 1e-4, f"{family}: max |rlcot - HF| = {diff:.2e}"
    # A wrong weight layout would give O(1) errors; make sure the comparison is not vacuous.
    assert np.abs(expected[valid]).max() > 1.0


def test_incremental_decode_matches_full_forward(loaded):
    family, _, _, cfg, graphdef, params = loaded
    tokens, valid, positions = make_inputs(cfg.vocab_size)
    full, _ = tr.forward(graphdef, params, tokens, positions, valid)
    step = jax.jit(tr.forward, static_argnums=0)
    cache = tr.init_cache(cfg, tokens.shape[0], 16)
    prefill = 5
    chunks = []
    logits, cache = step(graphdef, params, tokens[:, :prefill], positions[:, :prefill],
                         valid[:, :prefill], cache)
    chunks.append(logits)
    for t in range(prefill, tokens.shape[1]):
        logits, cache = step(graphdef, params, tokens[:, t:t + 1], positions[:, t:t + 1],
                             valid[:, t:t + 1], cache)
        chunks.append(logits)
    incremental = np.concatenate([np.asarray(c) for c in chunks], axis=1)
    diff = np.abs(np.where(valid[..., None], incremental - np.asarray(full), 0)).max()
    assert diff <= 1e-5, f"{family}: max |decode - full| = {diff:.2e}"


def test_export_round_trip(loaded, tmp_path):
    family, ckpt, _, cfg, graphdef, params = loaded
    out = hf.save_hf(tmp_path / "export", cfg, params, dtype="float32")
    cfg2, graphdef2, params2 = hf.load_hf(out)
    assert cfg2.replace(name="") == cfg.replace(name="")
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Exported tensors equal the source checkpoint's tensors, name by name.
    from safetensors.numpy import load_file
    src, dst = load_file(ckpt / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(src) == set(dst)
    for name in src:
        np.testing.assert_array_equal(src[name], dst[name], err_msg=name)


def test_config_round_trip(loaded):
    _, _, _, cfg, _, _ = loaded
    assert hf.config_from_hf(hf.config_to_hf(cfg)).replace(name="") == cfg.replace(name="")


def test_export_loads_in_transformers(loaded, tmp_path):
    # Users take trained models out through save_hf: transformers itself must load the export.
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    family, _, expected, cfg, graphdef, params = loaded
    out = hf.save_hf(tmp_path / "export", cfg, params, dtype="float32")
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32,
                                                              attn_implementation="eager")
    tokens, valid, positions = make_inputs(cfg.vocab_size)
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(tokens).long(),
                       attention_mask=torch.from_numpy(valid).long(),
                       position_ids=torch.from_numpy(positions).long()).logits.numpy()
    diff = np.abs(np.where(valid[..., None], logits - expected, 0)).max()
    assert diff <= 1e-5, f"{family}: exported model differs from the source by {diff:.2e}"


def test_load_straight_into_shardings(tmp_path):
    # Each tensor is placed from host memory into its (data, fsdp, tensor) sharding on load.
    from rlcot import sharding
    expected = write_checkpoint("qwen2", tmp_path)
    mesh = sharding.make_mesh(2, 2, 2)
    cfg, graphdef, params = hf.load_hf(tmp_path, mesh=mesh)
    q = params["blocks"]["q"].get_value()
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    tokens, valid, positions = make_inputs(cfg.vocab_size)
    logits, _ = jax.jit(tr.forward, static_argnums=0)(graphdef, params, tokens, positions, valid)
    diff = np.abs(np.where(valid[..., None], np.asarray(logits) - expected, 0)).max()
    assert diff <= 1e-4, diff
