"""LoRA adapters (rlcot.models.lora): settings validated by name, a zero B leaves every family's
logits unchanged, the merge is the LoRA formula, the merged export is the adapted model in
transformers, gradients reach only the adapters (sharded too), the reference is the base."""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).parent))
from golden_specs import FAMILIES, make_inputs, make_weights  # noqa: E402

from rlcot import run_config, sharding  # noqa: E402
from rlcot.models import hf, lora, presets  # noqa: E402
from rlcot.models import transformer as tr  # noqa: E402
from rlcot.rl.kl import KLConfig  # noqa: E402
from rlcot.rl.logprobs import make_logprob_fn  # noqa: E402
from rlcot.rl.objective import ObjectiveConfig  # noqa: E402
from rlcot.rl.optim import OptimizerConfig  # noqa: E402
from rlcot.rl.state import UpdateConfig, init_train_state  # noqa: E402
from rlcot.rl.update import make_update_step  # noqa: E402

GOLDEN = Path(__file__).parent / "golden"
FAST = {"xla_backend_optimization_level": 0, "xla_cpu_experimental_ynn_fusion_type": ""}
ALL = lora.LoraConfig(enabled=True, rank=4, alpha=8.0)


def _arrays(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _randomize_b(adapters, seed=0, std=0.05):
    """Adapters as after some training: B no longer zero."""
    key = jax.random.key(seed)
    out = jax.tree.map(lambda x: x, adapters, is_leaf=lambda x: isinstance(x, lora.nnx.Variable))
    for i, name in enumerate(adapters):
        b = adapters[name]["b"]
        shape = b.get_value().shape
        out[name]["b"] = b.replace(std * jax.random.normal(jax.random.fold_in(key, i), shape))
    return out


# ---- settings ----------------------------------------------------------------------------------

@pytest.mark.parametrize("values, match", [
    (dict(rank=0), "lora.rank must be an int >= 1, got 0"),
    (dict(alpha=0.0), "lora.alpha must be a number > 0"),
    (dict(targets=("q", "qkv")), r"unknown projection\(s\) \['qkv'\]; valid: \['q', 'k', 'v', "
                                 r"'o', 'gate', 'up', 'down'\]"),
    (dict(targets=("q_proj",)), r"rlcot's names for \{'q_proj': 'q'\}"),
    (dict(targets=()), "lora.targets is empty"),
    (dict(targets=("q", "q")), "names a projection twice"),
    (dict(init="pissa"), r"lora.init must be one of \['kaiming', 'gaussian'\]"),
])
def test_bad_settings_fail_by_name(values, match):
    with pytest.raises(ValueError, match=match):
        run_config.build(UpdateConfig, {"lora": values}, "learner")


def test_settings_from_the_command_line_path():
    c = run_config.default_config()
    c.learner.lora.enabled = True
    c.learner.lora.targets = ("q", "v")
    cfg = run_config.build(UpdateConfig, c.learner, "learner").lora
    assert cfg.enabled and cfg.targets == ("q", "v") and cfg.scale == 16.0 / 8
    assert lora.LoraConfig(rank=16, alpha=8.0, rslora=True).scale == 2.0
    c.learner.lora.rnk = 4
    with pytest.raises(KeyError, match=r"config.learner.lora: unknown key\(s\) \['rnk'\]"):
        run_config.build(UpdateConfig, c.learner, "learner")


def test_lora_with_another_reference_is_refused():
    c = run_config.default_config()
    c.model.source = "preset:tiny"
    c.rewards = {"r1_tag_count": 1.0}
    c.learner.lora.enabled = True
    c.learner.objective.kl.placement = "loss"
    c.train.ref_refresh_every = 5
    with pytest.raises(ValueError, match="the KL reference of a LoRA run is its frozen base"):
        run_config.resolve(c)


# ---- every family: zero B, the formula, the export --------------------------------------------

@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    name = request.param
    ckpt = tmp_path_factory.mktemp(name)
    specs = json.loads(str(np.load(GOLDEN / f"{name}.npz")["specs"]))
    save_file(make_weights(name, specs), str(ckpt / "model.safetensors"))
    (ckpt / "config.json").write_text(json.dumps(FAMILIES[name]))
    cfg, graphdef, params = hf.load_hf(ckpt)
    return name, cfg, graphdef, params


def test_zero_b_leaves_logits_unchanged(family):
    name, cfg, graphdef, params = family
    adapters = lora.init_adapters(ALL, params, seed=0)
    assert all(np.abs(np.asarray(ab["a"].get_value())).max() > 0 for ab in adapters.values())
    tokens, valid, positions = make_inputs(cfg.vocab_size)
    fwd = jax.jit(tr.forward, static_argnums=0)
    base, _ = fwd(graphdef, params, tokens, positions, valid)
    merged, _ = fwd(graphdef, lora.merge(params, adapters, ALL.scale), tokens, positions, valid)
    np.testing.assert_array_equal(np.asarray(merged), np.asarray(base), err_msg=name)
    # Applied inside the projections (how the train steps run them): x W + s (x A) 0 = x W.
    adapted, _ = fwd(graphdef, lora.Adapted(params, adapters, ALL.scale), tokens, positions,
                     valid)
    np.testing.assert_array_equal(np.asarray(adapted), np.asarray(base), err_msg=name)


def test_merge_is_the_lora_formula(family):
    """x W' = x W + (alpha / r) (x A) B, for an input-one-axis (q) and an input-two-axes (o)
    projection, computed the way a LoRA layer computes it (never forming A @ B)."""
    _, cfg, _, params = family
    adapters = _randomize_b(lora.init_adapters(ALL, params, seed=1))
    merged = lora.merge(params, adapters, ALL.scale)
    rng = np.random.default_rng(0)
    x_TxD = jnp.asarray(rng.normal(size=(5, cfg.d_model)), jnp.float32)
    q = lambda p: p["blocks"]["q"].get_value()[1]  # noqa: E731  (layer 1)
    a, b = (adapters["q"][k].get_value()[1] for k in ("a", "b"))
    want = (jnp.einsum("td,dnh->tnh", x_TxD, q(params))
            + ALL.scale * jnp.einsum("tr,rnh->tnh", x_TxD @ a, b))
    np.testing.assert_allclose(jnp.einsum("td,dnh->tnh", x_TxD, q(merged)), want, atol=1e-5)
    x_TxNxH = jnp.asarray(rng.normal(size=(5, cfg.n_heads, cfg.head_dim)), jnp.float32)
    o = lambda p: p["blocks"]["o"].get_value()[0]  # noqa: E731
    a, b = (adapters["o"][k].get_value()[0] for k in ("a", "b"))
    want = (jnp.einsum("tnh,nhd->td", x_TxNxH, o(params))
            + ALL.scale * (jnp.einsum("tnh,nhr->tr", x_TxNxH, a) @ b))
    np.testing.assert_allclose(jnp.einsum("tnh,nhd->td", x_TxNxH, o(merged)), want, atol=1e-5)
    # Projections not adapted, norms and embeddings are the base's own arrays.
    only_q = lora.LoraConfig(enabled=True, rank=2, targets=("q",))
    m = lora.merge(params, lora.init_adapters(only_q, params, seed=0), only_q.scale)
    assert m["blocks"]["v"].get_value() is params["blocks"]["v"].get_value()


def test_merged_export_equals_the_adapted_forward(family, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    name, cfg, graphdef, params = family
    adapters = _randomize_b(lora.init_adapters(ALL, params, seed=2))
    merged = lora.make_merge_fn(ALL, params)(params, adapters)
    tokens, valid, positions = make_inputs(cfg.vocab_size)
    fwd = jax.jit(tr.forward, static_argnums=0)
    # The adapted forward as the train steps run it: x W + s (x A) B inside each projection.
    adapted, _ = fwd(graphdef, lora.Adapted(params, adapters, ALL.scale), tokens, positions,
                     valid)
    base, _ = fwd(graphdef, params, tokens, positions, valid)
    via_merge, _ = fwd(graphdef, merged, tokens, positions, valid)
    adapted, base, via_merge = np.asarray(adapted), np.asarray(base), np.asarray(via_merge)
    assert np.abs(np.where(valid[..., None], adapted - base, 0)).max() > 1e-2  # not vacuous
    diff = np.abs(np.where(valid[..., None], via_merge - adapted, 0)).max()
    assert diff <= 2e-5, f"{name}: merged weights differ from the adapted forward by {diff:.2e}"
    out = hf.save_hf(tmp_path / "export", cfg, merged, dtype="float32")
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32,
                                                              attn_implementation="eager")
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(tokens).long(),
                       attention_mask=torch.from_numpy(valid).long(),
                       position_ids=torch.from_numpy(positions).long()).logits.numpy()
    # The export holds the merged weights: transformers on it equals rlcot's forward on the same
    # merged weights within 1e-5, and rlcot's adapted forward (x W + s (x A) B, another
    # rounding of the same sum) within 2e-5: logits reach ~8 here, where float32 rounding
    # alone is ~1e-6 per operation (observed 4e-6 to 1.1e-5).
    diff = np.abs(np.where(valid[..., None], logits - via_merge, 0)).max()
    assert diff <= 1e-5, f"{name}: merged export differs from the merged forward by {diff:.2e}"
    diff = np.abs(np.where(valid[..., None], logits - adapted, 0)).max()
    assert diff <= 2e-5, f"{name}: merged export differs from the adapted forward by {diff:.2e}"


# ---- the update step: gradients reach only the adapters; the reference is the base ------------

CFG = presets.get_config("tiny", vocab_size=64, d_model=64, mlp_dim=128, head_dim=16)
UCFG = UpdateConfig(objective=ObjectiveConfig(kl=KLConfig(estimator="k3", placement="loss",
                                                         coef=0.1)),
                    optimizer=OptimizerConfig(lr=0.05, eps=1.0, max_grad_norm=1.0),
                    minibatches=2, micro_batches=2, logprob_chunk=5,
                    lora=lora.LoraConfig(enabled=True, rank=4, alpha=8.0))


def _setup(mesh=None):
    graphdef, base = tr.init_params(CFG, seed=1, mesh=mesh)
    adapters = lora.init_adapters(UCFG.lora, base, seed=0, mesh=mesh)
    state = init_train_state(UCFG, adapters, mesh=mesh)
    return graphdef, base, state


N, L, P = 16, 12, 4


def _batch(graphdef, params, seed=0):
    from rlcot.rl.batch import UpdateBatch
    from rlcot.rl.logprobs import token_logprobs
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, L - P + 1, N)
    tokens = rng.integers(0, CFG.vocab_size, (N, L)).astype(np.int32)
    valid = np.arange(L)[None, :] < (P + lengths)[:, None]
    positions = np.asarray(tr.positions_from_mask(valid))
    mask = ((np.arange(L)[None, :] >= P) & valid).astype(np.float32)
    logp, _ = jax.jit(lambda p: token_logprobs(graphdef, p, tokens, positions, valid),
                      compiler_options=FAST)(params)
    adv = jnp.asarray(rng.normal(size=(N, 1)), jnp.float32) * mask
    return UpdateBatch(tokens, positions, valid, mask, adv, logp_old_NxL=logp * mask,
                       logp_ref_NxL=logp * mask)


@pytest.fixture(scope="module")
def stepped():
    graphdef, base, state = _setup()
    base_before, adapters_before = _arrays(base), _arrays(state.params)
    batch = _batch(graphdef, base)
    step = make_update_step(graphdef, UCFG, state, base_params=base, compiler_options=FAST)
    new, metrics = step(state, batch, jax.random.key(0))
    return graphdef, base, base_before, adapters_before, batch, new, metrics


def test_gradients_reach_only_the_adapters(stepped):
    graphdef, base, base_before, adapters_before, batch, new, metrics = stepped
    assert metrics["opt_steps"] == 2 and metrics["grad_norm"] > 0
    # The optimizer state covers the adapters and nothing else.
    adapter_shapes = sorted(x.shape for x in jax.tree.leaves(new.params))
    moments = [x for x in jax.tree.leaves(new.opt_state) if x.ndim > 0]
    assert sorted(x.shape for x in moments) == sorted(adapter_shapes * 2)  # Adam's mu and nu
    assert new.ref_params is None and new.critic_params is None
    n_adapters = sum(x.size for x in jax.tree.leaves(new.params))
    assert n_adapters < 0.25 * tr.count_params(base)
    # The base is bit for bit what it was (it is an input of the step, not donated).
    for x, y in zip(_arrays(base), base_before, strict=True):
        np.testing.assert_array_equal(x, y)
    # B moved off zero, so the policy now differs from the base. A moved too, but only in the
    # second minibatch: with B = 0 the gradient of A is exactly 0 (d/dA of x A B).
    before = dict(zip([p for p, _ in jax.tree_util.tree_leaves_with_path(new.params)],
                      adapters_before))
    for path, x in jax.tree_util.tree_leaves_with_path(new.params):
        moved = np.abs(np.asarray(x) - before[path]).max()
        assert moved > (1e-4 if "'b'" in jax.tree_util.keystr(path) else 0), (path, moved)


def test_reference_logprobs_with_adapters_off_are_the_base_models(stepped):
    """The loop's reference log-probs: the same compiled forward on the base (adapters off).
    They equal a fresh full model's with the base weights, while the adapted policy's differ."""
    graphdef, base, _, _, batch, new, _ = stepped
    fn = make_logprob_fn(graphdef, base, chunk=5, compiler_options=FAST)
    args = (batch.tokens_NxL, batch.positions_NxL, batch.valid_NxL)
    ref = np.asarray(fn(base, *args))
    policy = np.asarray(fn(lora.merge(base, new.params, UCFG.lora.scale), *args))
    _, fresh = tr.init_params(CFG, seed=1)  # the same base, built again: no adapter anywhere
    expected = np.asarray(fn(fresh, *args))
    np.testing.assert_array_equal(ref, expected)
    assert np.abs(policy - ref).max() > 1e-3
    # Zero adapters (the start of training): the merged weights are the base's bit for bit.
    zero = lora.init_adapters(UCFG.lora, base, seed=0)
    np.testing.assert_array_equal(np.asarray(fn(lora.merge(base, zero, UCFG.lora.scale), *args)),
                                  ref)


def test_sharded_lora_step_equals_single_device(stepped):
    graphdef, _, _, _, batch, new, metrics = stepped
    mesh = sharding.make_mesh(2, 2, 2)
    _, base_m, state_m = _setup(mesh)
    a_q = state_m.params["q"]["a"].get_value()
    assert a_q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", None)  # like q's embed
    b_q = state_m.params["q"]["b"].get_value()
    assert b_q.sharding.spec == jax.sharding.PartitionSpec(None, None, "tensor", None)
    step_m = make_update_step(graphdef, UCFG, state_m, mesh=mesh, base_params=base_m,
                              compiler_options=FAST)
    new_m, metrics_m = step_m(state_m, batch, jax.random.key(0))
    for x, y in zip(_arrays(new.params), _arrays(new_m.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-5)
    for k in ("loss", "grad_norm", "kl_ref_mean"):
        np.testing.assert_allclose(float(metrics_m[k]), float(metrics[k]), rtol=1e-5, atol=1e-6)


def test_memory_bytes():
    full = lora.memory_bytes(CFG, None)
    small = lora.memory_bytes(CFG, UCFG.lora)
    n, n_base = lora.adapter_params(UCFG.lora, CFG), CFG.num_params()
    assert n == sum(x.size for x in jax.tree.leaves(_setup()[2].params))
    assert small == {"weights": 4 * n_base, "reference": 0, "trained": 4 * n, "grads": 4 * n,
                     "optimizer": 8 * n, "total": 4 * n_base + 16 * n}
    assert full["total"] == (4 + 4 + 4 + 8) * n_base
    assert lora.memory_bytes(CFG, None, reference=False)["total"] == 16 * n_base
