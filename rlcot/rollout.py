"""One RL step's rollout: prompts -> G samples each -> scores, with DAPO dynamic sampling; and
`align_learner`, which makes the learner's settings agree with how rollouts are drawn."""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from rlcot.rewards import RewardInput
from rlcot.sampling import SamplingSpec, TrainerBatch, completion_texts, trainer_batch

log = logging.getLogger(__name__)

# Cap of the truncated importance weights `off_policy='correct'` turns on (as in Yao et al.'s
# TIS and verl's rollout importance sampling default).
CORRECTION_TIS_CAP = 2.0


class OffPolicyWarning(UserWarning):
    """Rollouts come from a distribution other than the one the loss's ratio assumes."""


_WARNED: set[str] = set()


def off_policy_settings(rollout: Any) -> list[str]:
    """The sampling settings that make the sampler's distribution differ from the policy at
    temperature 1 (what the trainer's log-probs are), e.g. ['temperature=0.6', 'top_p=0.95']."""
    out = []
    if rollout.temperature != 1.0:
        out.append(f"temperature={rollout.temperature}")
    if rollout.top_k:
        out.append(f"top_k={rollout.top_k}")
    if rollout.top_p < 1.0:
        out.append(f"top_p={rollout.top_p}")
    if rollout.min_p > 0.0:
        out.append(f"min_p={rollout.min_p}")
    return out


def align_learner(rc: Any) -> Any:
    """The run config with its learner made to agree with the rollout settings; call once at
    setup, before the update step is built.

    - Dr.GRPO's normaliser (aggregation mode 'constant' without `constant` or `max_tokens`)
      gets the completion budget `max_tokens = rollout.max_new_tokens`.
    - Off-policy sampling: with temperature != 1, top-k, top-p or min-p, tokens come from the
      tempered, filtered distribution q while the ratio's old log-probs are those of the policy
      at temperature 1. Unless `learner.objective.tis_cap` is set (truncated importance
      sampling with weights min(pi_old / q, cap), q the sampler's own log-probs), `rollout.off_policy`
      decides: 'warn' (once, loudly, naming the settings), 'correct' (sets tis_cap to
      CORRECTION_TIS_CAP; greedy sampling cannot be corrected and raises) or 'error'.
      verl and TRL instead divide the trainer's logits by the sampling temperature (and
      ignore the filters); rlcot keeps the policy at temperature 1 and says so.
    - Dynamic sampling's filter must name a term of the reward spec (or 'accuracy' / 'total').
    """
    ro, learner = rc.rollout, rc.learner
    obj = learner.objective
    agg = obj.aggregation
    if agg.mode == "constant" and agg.constant is None and agg.max_tokens is None:
        agg = dataclasses.replace(agg, max_tokens=ro.max_new_tokens)
    settings = off_policy_settings(ro)
    tis_cap = obj.tis_cap
    if settings and tis_cap is None:
        what = (f"rollout sampling is off-policy ({', '.join(settings)}): tokens are drawn from "
                f"the tempered/filtered distribution while the loss's ratio uses the policy at "
                f"temperature 1, and learner.objective.tis_cap is not set")
        if ro.off_policy == "error":
            raise ValueError(f"{what}. Set learner.objective.tis_cap (e.g. 2.0), "
                             f"rollout.off_policy='correct', or sample at temperature 1 "
                             f"without filters.")
        if ro.off_policy == "correct":
            if ro.temperature == 0:
                raise ValueError(f"{what}; greedy sampling (temperature=0) has no sampling "
                                 f"distribution to correct against: sample with temperature > 0")
            tis_cap = CORRECTION_TIS_CAP
            log.warning("%s; correcting it: truncated importance sampling against the "
                        "sampler's log-probs, tis_cap=%s (rollout.off_policy='correct')",
                        what, tis_cap)
        elif what not in _WARNED:
            _WARNED.add(what)
            msg = (f"{what}. THE UPDATE IS OFF-POLICY. Set learner.objective.tis_cap (e.g. "
                   f"2.0) or rollout.off_policy='correct' to correct it with truncated "
                   f"importance sampling, or rollout.off_policy='error' to refuse.")
            log.warning("%s\n%s\n%s", "!" * 78, msg, "!" * 78)
            warnings.warn(msg, OffPolicyWarning, stacklevel=2)
    if ro.dynamic_sampling:
        from rlcot.rewards.registry import filter_label, parse_reward_spec
        filter_label(parse_reward_spec(rc.rewards), ro.dynamic_sampling_filter)
    if agg is obj.aggregation and tis_cap == obj.tis_cap:
        return rc
    obj = dataclasses.replace(obj, aggregation=agg, tis_cap=tis_cap)
    return dataclasses.replace(rc, learner=dataclasses.replace(learner, objective=obj))


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
            key: jax.Array, dynamic_sampling: bool, max_rounds: int,
            filter_on: str = "accuracy") -> Rollout:
    """Samples and scores rounds of `batch_prompts` prompts until `batch_prompts` groups are
    kept (every group, without dynamic sampling; with it, only groups whose `filter_on` values
    differ: 'accuracy' (the reward spec's accuracy term, as DAPO filters: a shaping term such
    as format or length must not keep a group whose answers are all right or all wrong),
    'total' (the combined reward) or a reward term label).

    generate: Sampler.generate. score: RewardInput -> CombinedRewards. Groups left short after
    `max_rounds` are filled with dropped groups whose rows are marked invalid.
    """
    G = num_samples
    kept: list[tuple[int, int]] = []     # (round, group) in the order they were kept
    dropped: list[tuple[int, int]] = []
    rounds = []
    stats = {"generate_s": 0.0, "score_s": 0.0, "groups_sampled": 0, "groups_kept": 0,
             "tokens_sampled": 0.0}
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
        tb = trainer_batch(out)
        combined = score(RewardInput(
            prompts=[p for p in prompts["prompt_text"] for _ in range(G)], completions=texts,
            examples=examples, completion_lengths=lengths.astype(np.int32),
            group_ids=np.repeat(np.arange(B, dtype=np.int32), G), truncated=truncated,
            sequences=tb))
        stats["score_s"] += time.perf_counter() - t0
        total_BxG = np.asarray(combined.total, np.float32).reshape(B, G)
        filter_BxG = (np.asarray(combined.filter_values(filter_on), np.float32).reshape(B, G)
                      if dynamic_sampling else total_BxG)
        rounds.append(dict(batch=tb, scores=total_BxG.reshape(-1),
                           components={k: np.asarray(v.values, np.float32)
                                       for k, v in combined.components.items()},
                           metrics=dict(combined.metrics), lengths=lengths, truncated=truncated,
                           texts=texts, examples=examples))
        stats["groups_sampled"] += B
        stats["tokens_sampled"] += float(lengths.sum())  # dropped groups' tokens included
        for b in range(B):
            informative = filter_BxG[b].max() > filter_BxG[b].min()
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


def gather(rollout: Rollout) -> Rollout:
    """The numbers of every process's rows of a rollout, in global row order, the same on every
    process: what the step's metrics are computed from, so that all processes log what a
    one-process run logs. The batch, texts and examples stay this process's own. Reward means
    are recomputed over all rows; other counters are combined by distributed.merge_metrics.
    With one process, the rollout itself."""
    from rlcot import distributed
    if not distributed.multi():
        return rollout
    g = distributed.gather_rows
    scores_N = g(rollout.scores_N)
    components = {k: g(v) for k, v in rollout.components.items()}
    metrics = distributed.merge_metrics(rollout.reward_metrics)
    for label, values in (*components.items(), ("total", scores_N)):
        if f"reward/{label}/mean" in metrics:
            metrics[f"reward/{label}/mean"] = float(values.mean())
    stats = distributed.merge_metrics(
        {k: v for k, v in rollout.stats.items() if k != "rounds"})
    stats["rounds"] = rollout.stats.get("rounds", 1)
    return dataclasses.replace(
        rollout, scores_N=scores_N, components=components, reward_metrics=metrics,
        row_valid_N=g(rollout.row_valid_N), lengths_N=g(rollout.lengths_N),
        truncated_N=g(rollout.truncated_N), stats=stats)
