"""What sampling returns, and its two consumers: the trainer's batch and the decoded texts."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlcot.models.transformer import positions_from_mask
from rlcot.sampling.stop import find_stop


@dataclasses.dataclass
class SampleOutput:
    """G completions for each of B prompts. Rows are prompt-major: row b * G + g, so
    `x.reshape(B, G, ...)` groups a prompt's samples. T = spec.max_new_tokens.

    tokens_NxT: completion ids, pad_id after each row's end (the stop token is kept).
    mask_NxT: the completion's tokens (including the stop token).
    lengths_N: completion lengths in tokens.
    truncated_N: the row reached max_new_tokens without a stop id or stop string.
    logp_NxT: log pi(token | prefix) under the model itself (temperature 1, no top-k/p/min-p):
        the policy the RL loss is written for. The trainer normally recomputes these "old"
        log-probs with its own forward pass (sampler and trainer numerics differ slightly:
        cache, kernels, sharding); these serve when recompute is skipped, and to measure that
        mismatch.
    sample_logp_NxT: log q(token | prefix) under the distribution the token was actually drawn
        from (temperature and filters applied; 0 for greedy). exp(logp - sample_logp) is the
        importance weight from the behaviour distribution q to pi that truncated importance
        sampling clips.
    prompt_tokens_BxP / prompt_lens_B: the prompts as sampled (left-padded to the bucket).
    stats: sizes and timings (plan, steps run, compile seconds).
    """
    tokens_NxT: jax.Array
    mask_NxT: jax.Array
    lengths_N: jax.Array
    truncated_N: jax.Array
    logp_NxT: jax.Array
    sample_logp_NxT: jax.Array
    prompt_tokens_BxP: jax.Array
    prompt_lens_B: jax.Array
    num_samples: int
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainerBatch:
    """Prompt + completion as one left-padded/right-padded sequence of length L = P + T.

    Row n is [pad.. prompt | completion ..pad]; valid tokens are contiguous, so positions are
    0..len-1 over them. completion_mask_NxL marks the sampled tokens; logp/sample_logp are
    aligned with tokens (the log-prob of token t given tokens < t; 0 elsewhere). The trainer's
    logits at t predict token t + 1: use logits[:, :-1] against tokens[:, 1:] with
    completion_mask[:, 1:].
    """
    tokens_NxL: jax.Array
    positions_NxL: jax.Array
    valid_NxL: jax.Array
    completion_mask_NxL: jax.Array
    logp_NxL: jax.Array
    sample_logp_NxL: jax.Array


def trainer_batch(out: SampleOutput) -> TrainerBatch:
    G = out.num_samples
    P = out.prompt_tokens_BxP.shape[1]
    prompt_NxP = jnp.repeat(out.prompt_tokens_BxP, G, axis=0)
    prompt_valid_NxP = jnp.arange(P)[None, :] >= (P - jnp.repeat(out.prompt_lens_B, G))[:, None]
    tokens_NxL = jnp.concatenate([prompt_NxP, out.tokens_NxT], axis=1)
    valid_NxL = jnp.concatenate([prompt_valid_NxP, out.mask_NxT], axis=1)
    completion_NxL = jnp.concatenate([jnp.zeros_like(prompt_valid_NxP), out.mask_NxT], axis=1)
    zeros_NxP = jnp.zeros(prompt_NxP.shape, jnp.float32)
    return TrainerBatch(tokens_NxL, positions_from_mask(valid_NxL), valid_NxL, completion_NxL,
                        jnp.concatenate([zeros_NxP, out.logp_NxT], axis=1),
                        jnp.concatenate([zeros_NxP, out.sample_logp_NxT], axis=1))


def completion_texts(tokenizer: Any, out: SampleOutput, stop_strings: Sequence[str] = (),
                     include_stop_str: bool = True, skip_special: bool = True) -> list[str]:
    """Each row's completion as text, ending at its stop token / stop string.

    A stop string can end inside a token; the text is cut right after the string
    (include_stop_str) or before it. Stop tokens that are special (eos, end of turn) are
    dropped with skip_special.
    """
    tokens = np.asarray(jax.device_get(out.tokens_NxT))
    lengths = np.asarray(jax.device_get(out.lengths_N))
    texts = []
    for row, n in zip(tokens, lengths):
        text = tokenizer.decode(row[:n].tolist(), skip_special=skip_special)
        end = find_stop(text, stop_strings) if stop_strings else None
        if end is not None:
            cut = end if include_stop_str else end - len(_ending_stop(text[:end], stop_strings))
            text = text[:cut]
        texts.append(text)
    return texts


def _ending_stop(text: str, stop_strings: Sequence[str]) -> str:
    return max((s for s in stop_strings if text.endswith(s)), key=len)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, width: int | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Token lists -> (left-padded int32 [B, P], lengths [B]); P = width or the longest."""
    lens = np.array([len(p) for p in prompts], np.int32)
    if len(prompts) == 0 or lens.min() < 1:
        raise ValueError(f"every prompt needs at least one token; lengths {lens.tolist()}")
    P = int(lens.max()) if width is None else width
    if lens.max() > P:
        raise ValueError(f"prompt of {lens.max()} tokens does not fit width {P}")
    out = np.full((len(prompts), P), pad_id, np.int32)
    for i, p in enumerate(prompts):
        out[i, P - len(p):] = p
    return out, lens
