"""The merge stage: the merged policy is exactly the weighted sum of its sources' parameters
(and loads as a model source), and bad merges (shapes, tokenizers, weights, sources) fail
before any weight is loaded, naming what differs."""

import json

import jax
import ml_collections as mlc
import numpy as np
import pytest

from rlcot import sources, stages, study
from rlcot.checkpoint import Checkpointer
from rlcot.models.presets import get_config
from rlcot.models.transformer import init_params
from rlcot.stages import merge
from rlcot.tokenizer import train_sentencepiece

TEXTS = ["add the digits and carry the one", "first 4+6=10 so 0 carry 1", "answer 583"]


def _config(**kw):
    return get_config("tiny", vocab_size=300, n_layers=1, d_model=32, n_heads=2, n_kv_heads=1,
                      head_dim=16, mlp_dim=64, max_position=64).replace(**kw)


@pytest.fixture(scope="module")
def tokenizers():
    return (train_sentencepiece(TEXTS, 290, hard_vocab_limit=False),
            train_sentencepiece([t.upper() for t in TEXTS], 290, hard_vocab_limit=False))


def _policy(path, cfg, seed, tok, weights=True):
    """A finished stage directory holding a random policy (without its checkpoint when
    weights=False: a merge that loaded it would fail on that instead)."""
    path.mkdir(parents=True)
    if weights:
        _, params = init_params(cfg, seed=seed)
        ckpt = Checkpointer(path)
        ckpt.save(0, sources.PolicyOnly(params), {"step": 0})
        ckpt.close()
    sources.write_model_card(path, cfg, tok, None, f"test seed {seed}")
    (path / "summary.json").write_text(json.dumps({"finished": True}))
    return f"workdir:{path}"


def _study(**merges):
    c = mlc.ConfigDict()
    c.seed = 0
    c.stage_order = tuple(merges)
    c.stages = {name: stages.defaults("merge", **spec) for name, spec in merges.items()}
    return c


def _leaves(source):
    return [np.asarray(x) for x in jax.tree.leaves(sources.Resolver().load(source).params)]


def test_merge_is_the_weighted_sum(tmp_path, tokenizers):
    tok = tokenizers[0]
    a = _policy(tmp_path / "a", _config(), 1, tok)
    b = _policy(tmp_path / "b", _config(), 2, tok)
    out = tmp_path / "study"
    summary = study.run(_study(
        m=dict(models=(a, b), weights=(0.25, 0.75)),
        # A merge of a merge (a `stage:` source) and a third policy, equal weights by default.
        m3=dict(models=("stage:m", a))), out)
    assert summary["finished"]
    assert summary["stages"]["m"]["weights"] == [0.25, 0.75]
    assert summary["stages"]["m3"]["weights"] == [0.5, 0.5]
    pa, pb = _leaves(a), _leaves(b)
    pm, pm3 = _leaves(f"workdir:{out / 'm'}"), _leaves(f"workdir:{out / 'm3'}")
    for x, y, m, m3 in zip(pa, pb, pm, pm3):
        assert m.dtype == np.float32 and m.shape == x.shape
        # float64 sum, rounded once to float32: bit for bit.
        np.testing.assert_array_equal(
            m, (0.25 * x.astype(np.float64) + 0.75 * y.astype(np.float64)).astype(np.float32))
        np.testing.assert_array_equal(
            m3, (0.5 * m.astype(np.float64) + 0.5 * x.astype(np.float64)).astype(np.float32))
    # Every random (not all-ones norm) parameter differs from both sources.
    moved = [not np.array_equal(m, x) and not np.array_equal(m, y)
             for x, y, m in zip(pa, pb, pm)]
    assert sum(moved) == sum(not np.all(x == 1.0) for x in pa) > 3
    card = sources.read_model_card(out / "m")
    assert sources.config_from_dict(card["config"]) == _config()
    merged_tok = sources.card_tokenizer(out / "m", sources.Resolver())
    assert merged_tok.encode(TEXTS[1]) == tok.encode(TEXTS[1])


def test_different_shapes_fail_naming_them_before_loading(tmp_path, tokenizers):
    tok = tokenizers[0]
    a = _policy(tmp_path / "a", _config(), 1, tok, weights=False)
    wide = _policy(tmp_path / "wide", _config(d_model=64, mlp_dim=128), 2, tok, weights=False)
    with pytest.raises(ValueError) as e:
        study.run(_study(m=dict(models=(a, wide))), tmp_path / "study")
    msg = str(e.value)
    assert "different parameter shapes" in msg and "models[1]" in msg
    assert "['blocks']['attn_norm'] (1, 32) vs (1, 64)" in msg and "(and 5 more)" in msg
    assert "d_model: 32 vs 64" in msg and "mlp_dim: 64 vs 128" in msg
    # Same shapes, another architecture (RoPE base): not silently merged either.
    rope = _policy(tmp_path / "rope", _config(rope_theta=500_000.0), 3, tok, weights=False)
    with pytest.raises(ValueError, match="same shapes but different architectures: "
                                         "rope_theta: 10000.0 vs 500000.0"):
        study.run(_study(m=dict(models=(a, rope))), tmp_path / "study2")


def test_different_tokenizers_fail(tmp_path, tokenizers):
    a = _policy(tmp_path / "a", _config(), 1, tokenizers[0], weights=False)
    b = _policy(tmp_path / "b", _config(), 2, tokenizers[1], weights=False)
    with pytest.raises(ValueError, match=r"models\[1\] .* has another tokenizer"):
        study.run(_study(m=dict(models=(a, b))), tmp_path / "study")


@pytest.mark.parametrize("spec,match", [
    (dict(models=("preset:tiny",)), "two or more model sources"),
    (dict(models=("preset:tiny", "preset:tiny"), weights=(0.5, 0.6)),
     r"sum to 1.1.*not 1 \(they are not normalised\)"),
    (dict(models=("preset:tiny", "preset:tiny"), weights=(1.0,)), "1 weights"),
    (dict(models=("preset:tiny", "stage:later")), "names a later stage"),
    (dict(models=("preset:tiny", "stage:gen")), r"models\[1\] = 'stage:gen', but stage 'gen' "
                                                r"\(generate\) produces no model"),
])
def test_bad_merges_fail_before_anything_runs(spec, match):
    c = _study(gen=dict(), m=spec, later=dict(models=("preset:tiny", "preset:tiny")))
    c.stages.gen = stages.defaults("generate", model={"source": "preset:tiny"},
                                   rewards={"r1_format": 1.0})
    with pytest.raises(ValueError, match=match):
        study.plan(c)


def test_sources_report_every_model():
    cfg = merge.resolve({"models": ["stage:a", "workdir:/x", "preset:tiny"]})
    assert merge.sources(cfg) == {"models[0]": "stage:a", "models[1]": "workdir:/x",
                                  "models[2]": "preset:tiny"}
    assert cfg.merge_weights() == (1 / 3,) * 3 and cfg.model.source == "stage:a"
