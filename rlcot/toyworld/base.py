"""The toy base model as a study stage: a tiny decoder pre-trained on the world's corpus."""

from __future__ import annotations

from typing import Any


def base_stage(**fields: Any) -> Any:
    """The `sft` stage that pre-trains the toy base model (0.44M parameters: 2 layers, width
    128, the world's 384-piece tokenizer) for 600 steps of 64 corpus documents, cached by
    content key so that every study and seed with the same settings shares it. Its seed is
    fixed (0) rather than the study's, so RL seeds vary RL only. `fields` override (nested
    mappings merge), e.g. base_stage(train={"steps": 30})."""
    from rlcot import stages
    from rlcot.study import deep_merge
    from rlcot.run_config import _plain
    spec = {
        "seed": 0,
        "model": {"source": "preset:tiny", "tokenizer": "toyworld",
                  "config": {"n_layers": 2, "d_model": 128, "n_heads": 4, "n_kv_heads": 2,
                             "head_dim": 32, "mlp_dim": 384, "max_position": 512}},
        "data": {"dataset": "toyworld_corpus"},
        # remat recomputes activations in the backward pass, which on CPU is also faster for a
        # model this small (measured).
        "optimizer": {"learning_rate": 3e-3, "warmup_steps": 50, "end_lr_ratio": 0.1,
                      "weight_decay": 0.0, "max_grad_norm": 1.0, "b2": 0.99, "remat": True},
        # Each batch's 48 shortest documents and its 16 others are padded separately: with
        # checked solutions ~1.7x longer than the rest this cuts padded tokens by ~28%.
        "train": {"steps": 600, "batch_size": 64, "length_multiple": 16, "short_rows": 48,
                  "checkpoint_every": 100, "log_every": 50, "cache": True},
    }
    return stages.defaults("sft", **deep_merge(spec, _plain(fields)))
