"""Named configs have the published parameter counts."""

import math

import jax
import pytest

from rlcot.models import hf, presets
from rlcot.models.transformer import abstract_model

# Exact counts: total_size/2 of each bf16 checkpoint's safetensors index (unique tensors).
PUBLISHED_EXACT = {
    "qwen2.5-0.5b": 494_032_768, "qwen2.5-1.5b": 1_543_714_304, "qwen2.5-7b": 7_615_616_512,
    "qwen2.5-math-1.5b": 1_543_714_304, "qwen2.5-math-7b": 7_615_616_512,
    "qwen3-0.6b": 596_049_920, "qwen3-4b": 4_022_468_096, "qwen3-8b": 8_190_735_360,
    "llama-3.2-1b": 1_235_814_400, "llama-3.2-3b": 3_212_749_824,
    "llama-3.1-8b": 8_030_261_248, "gemma-3-1b": 999_885_952,
    "smollm2-135m": 134_515_008, "smollm2-360m": 361_821_120, "smollm2-1.7b": 1_711_376_384,
}
# Model-card figures (non-embedding parameters, rounded): Qwen3-1.7B "1.4B" (its checkpoint
# stores the tied lm_head a second time, so the index total is not the unique count); Gemma 3
# technical report, table 1: 4B -> 3,209M non-embedding (the vision encoder is not ours).
PUBLISHED_NON_EMBEDDING = {"qwen3-1.7b": (1.4e9, 0.05), "gemma-3-4b": (3_209e6, 0.001),
                           "gemma-3-1b": (698e6, 0.001), "qwen3-8b": (6.95e9, 0.01)}


@pytest.mark.parametrize("name", sorted(PUBLISHED_EXACT))
def test_exact_parameter_counts(name):
    cfg = presets.get_config(name)
    assert cfg.num_params() == PUBLISHED_EXACT[name]


@pytest.mark.parametrize("name", sorted(PUBLISHED_NON_EMBEDDING))
def test_model_card_counts(name):
    figure, rel = PUBLISHED_NON_EMBEDDING[name]
    n = presets.get_config(name).num_params(include_embeddings=False)
    assert abs(n - figure) <= rel * figure, (name, n, figure)


@pytest.mark.parametrize("name", ["qwen2.5-7b", "gemma-3-4b", "qwen3-1.7b", "tiny"])
def test_model_state_matches_config_count(name):
    # The abstract model (no allocation) holds exactly the parameters the formula counts.
    cfg = presets.get_config(name)
    _, state = abstract_model(cfg)
    assert sum(math.prod(x.shape) for x in jax.tree.leaves(state)) == cfg.num_params()


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_presets_round_trip_through_hf_config(name):
    cfg = presets.get_config(name)
    assert hf.config_from_hf(hf.config_to_hf(cfg)).replace(name=cfg.name) == cfg


def test_unknown_name_lists_known():
    with pytest.raises(KeyError, match="qwen2.5-0.5b"):
        presets.get_config("qwen9")
