"""One RL step's rollout: prompts -> G samples each -> scores, with DAPO dynamic sampling."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from rlcot.rewards import RewardInput
from rlcot.sampling import SamplingSpec, TrainerBatch, completion_texts, trainer_batch


@dataclasses.dataclass
class Rollout:
    """B groups of G rows (prompt-major), ready for log-probs, advantages and the update.

    row_valid_N: False for rows of groups that only fill the batch after dynamic sampling ran
    out of rounds (their loss mask is zeroed). scores_N: the combined reward; components: each
    reward term's values (for logging). stats: counts and seconds of the rollout.
    """
    batch: TrainerBatch
    scores_N: np.ndarray
    components: dict[str, np.ndarray]
    reward_metrics: dict[str, float]
    row_valid_N: np.ndarray
    lengths_N: np.ndarray
    truncated_N: np.ndarray
    texts: list[str]
    examples: list[dict[str, Any]]
    stats: dict[str, float]


def _left_pad_to(tb: TrainerBatch, L: int) -> TrainerBatch:
    """Prepend invalid pad columns so that batches from different rounds concatenate."""
    extra = L - tb.tokens_NxL.shape[1]
    if extra == 0:
        return tb
    pad = lambda x: jnp.pad(x, ((0, 0), (extra, 0)))  # noqa: E731  (zeros: invalid, no loss)
    return TrainerBatch(*(pad(x) for x in (tb.tokens_NxL, tb.positions_NxL, tb.valid_NxL,
                                           tb.completion_mask_NxL, tb.logp_NxL,
                                           tb.sample_logp_NxL)))


def _concat(batches: list[TrainerBatch]) -> TrainerBatch:
    L = max(b.tokens_NxL.shape[1] for b in batches)
    batches = [_left_pad_to(b, L) for b in batches]
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *batches)


def _take_rows(tb: TrainerBatch, rows: np.ndarray) -> TrainerBatch:
    idx = jnp.asarray(rows)
    return jax.tree.map(lambda x: jnp.take(x, idx, axis=0), tb)


def collect(prompt_batches: Iterator[dict[str, Any]], generate: Callable, score: Callable,
            tokenizer: Any, spec: SamplingSpec, *, num_samples: int, batch_prompts: int,
            key: jax.Array, dynamic_sampling: bool, max_rounds: int) -> Rollout:
    """Samples and scores rounds of `batch_prompts` prompts until `batch_prompts` groups are
    kept (every group, without dynamic sampling; only groups whose rewards differ, with it).

    generate: Sampler.generate. score: RewardInput -> CombinedRewards. Groups left short after
    `max_rounds` are filled with dropped groups whose rows are marked invalid.
    """
    G = num_samples
    kept: list[tuple[int, int]] = []     # (round, group) in the order they were kept
    dropped: list[tuple[int, int]] = []
    rounds = []
    stats = {"generate_s": 0.0, "score_s": 0.0, "groups_sampled": 0, "groups_kept": 0}
    for r in range(max_rounds if dynamic_sampling else 1):
        prompts = next(prompt_batches)
        t0 = time.perf_counter()
        out = generate(prompts["prompt_tokens_BxT"], prompts["prompt_lens_B"],
                       jax.random.fold_in(key, r), num_samples=G, spec=spec)
        texts = completion_texts(tokenizer, out, spec.stop_strings)
        lengths = np.asarray(out.lengths_N)
        truncated = np.asarray(out.truncated_N)
        stats["generate_s"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        B = len(prompts["prompt_text"])
        examples = [ex for ex in prompts["example"] for _ in range(G)]
        combined = score(RewardInput(
            prompts=[p for p in prompts["prompt_text"] for _ in range(G)], completions=texts,
            examples=examples, completion_lengths=lengths.astype(np.int32),
            group_ids=np.repeat(np.arange(B, dtype=np.int32), G), truncated=truncated))
        stats["score_s"] += time.perf_counter() - t0
        total_BxG = np.asarray(combined.total, np.float32).reshape(B, G)
        rounds.append(dict(batch=trainer_batch(out), scores=total_BxG.reshape(-1),
                           components={k: np.asarray(v.values, np.float32)
                                       for k, v in combined.components.items()},
                           metrics=dict(combined.metrics), lengths=lengths, truncated=truncated,
                           texts=texts, examples=examples))
        stats["groups_sampled"] += B
        for b in range(B):
            informative = total_BxG[b].max() > total_BxG[b].min()
            (kept if informative or not dynamic_sampling else dropped).append((r, b))
        if len(kept) >= batch_prompts:
            break
    stats["rounds"] = len(rounds)
    stats["groups_kept"] = min(len(kept), batch_prompts)
    groups = kept[:batch_prompts]
    valid = [True] * len(groups)
    if len(groups) < batch_prompts:
        fill = dropped[:batch_prompts - len(groups)]
        groups += fill
        valid += [False] * len(fill)
    return _assemble(rounds, groups, valid, G, stats)


def _assemble(rounds: list[dict], groups: list[tuple[int, int]], valid: list[bool], G: int,
              stats: dict) -> Rollout:
    batch = _concat([r["batch"] for r in rounds])
    offsets = np.cumsum([0] + [len(r["scores"]) for r in rounds])
    rows = np.concatenate([offsets[r] + b * G + np.arange(G) for r, b in groups])
    row_valid = np.repeat(np.asarray(valid, bool), G)
    batch = _take_rows(batch, rows)
    batch = dataclasses.replace(batch, completion_mask_NxL=batch.completion_mask_NxL
                                & jnp.asarray(row_valid)[:, None])

    def cat(name):
        return np.concatenate([r[name] for r in rounds])[rows]

    components = {k: np.concatenate([r["components"][k] for r in rounds])[rows]
                  for k in rounds[0]["components"]}
    texts = [t for r in rounds for t in r["texts"]]
    examples = [e for r in rounds for e in r["examples"]]
    metrics: dict[str, float] = {}
    for r in rounds:  # the rewards of everything sampled, dropped groups included
        for k, v in r["metrics"].items():
            metrics[k] = metrics.get(k, 0.0) + float(v) / len(rounds)
    return Rollout(batch=batch, scores_N=cat("scores"), components=components,
                   reward_metrics=metrics, row_valid_N=row_valid, lengths_N=cat("lengths"),
                   truncated_N=cat("truncated"), texts=[texts[i] for i in rows],
                   examples=[examples[i] for i in rows], stats=stats)
