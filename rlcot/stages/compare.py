"""The `compare` stage kind: a model against a baseline (usually the policy it started from)
on the same held-out prompts, scored by a reward spec: the preference study's table.

Both models draw `rollout.num_samples` samples per prompt (temperature and filters of
`rollout`, the same key for both); sample k of the model meets sample k of the baseline on
the same prompt. Reported (summary `eval_after`):

  win_rate        share of meetings the model wins under `win_by` (a term label or 'total':
                  e.g. the true preference), a tie counting half; tie_rate beside it
  LABEL           mean of each reward term on the model's samples (baseline/LABEL: the
                  baseline's), e.g. the true score and the learned reward side by side
  kl              KL(model || baseline) per sequence, estimated on the model's own samples:
                  mean over samples of sum_t log pi(y_t) - log pi_0(y_t) (unbiased at
                  temperature 1 without filters; otherwise a divergence on the sampled
                  distribution, and the summary says so)
  length          mean completion tokens (baseline/length: the baseline's)
  agree/LABEL     for each other term (e.g. a learned reward logged at weight 0): the share of
                  meetings not tied under `win_by` in which LABEL prefers the same side as
                  `win_by` does (a tie under LABEL counts half): a learned reward's agreement
                  with the true preference ON THE TRAINED MODEL'S SAMPLES, to hold against its
                  held-out accuracy on the data it was trained on (reward hacking lowers it)

Per-sample records go to DIR/samples.jsonl.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Mapping

import numpy as np

from rlcot import run_config
from rlcot.sharding import MeshConfig
from rlcot.toyworld.corpus import WorldConfig

MAKES_MODEL = False


@dataclasses.dataclass(frozen=True)
class CompareStageConfig:
    model: run_config.ModelSection
    baseline: str
    rewards: Mapping[str, Any]
    seed: int = 0
    mesh: MeshConfig = MeshConfig()
    world: WorldConfig = WorldConfig()
    data: run_config.DataSection = run_config.DataSection(split="test", shuffle=False)
    rollout: run_config.RolloutSection = run_config.RolloutSection(num_samples=4)
    prompts: int | None = 256
    win_by: str = "total"

    def __post_init__(self):
        if not self.baseline:
            raise ValueError("a compare stage needs baseline: the model source to compare with")
        if self.prompts is not None and self.prompts < 1:
            raise ValueError(f"prompts must be >= 1 or None, got {self.prompts}")


def inherited(top: dict[str, Any]) -> dict[str, Any]:
    return {k: top[k] for k in ("seed", "mesh", "world", "rewards") if k in top}


def resolve(values: dict[str, Any]) -> CompareStageConfig:
    from rlcot.rewards import RewardCombiner
    from rlcot.rewards.registry import parse_reward_spec
    cfg = run_config.build(CompareStageConfig, values, "stage")
    cfg.model.check()
    RewardCombiner(cfg.rewards).close()
    labels = [t.label for t in parse_reward_spec(cfg.rewards)]
    if cfg.win_by != "total" and cfg.win_by not in labels:
        raise ValueError(f"win_by {cfg.win_by!r} is not 'total' or a reward term label {labels}")
    return cfg


def sources(cfg: CompareStageConfig) -> dict[str, str | None]:
    from rlcot.rewards.models import plan_sources
    return {"model.source": cfg.model.source, "model.baseline": cfg.baseline,
            **plan_sources(cfg.rewards)}


def defaults(**fields: Any) -> Any:
    from ml_collections import config_dict
    return config_dict.ConfigDict({"kind": "compare", **fields})


def agreement(x_model: np.ndarray, x_base: np.ndarray, y_model: np.ndarray,
              y_base: np.ndarray) -> float | None:
    """Share of meetings not tied under y in which x prefers the same side as y (a tie under x
    counts half); None when every meeting ties under y."""
    decided = y_model != y_base
    if not decided.any():
        return None
    dx = np.sign(np.asarray(x_model) - np.asarray(x_base))[decided]
    dy = np.sign(np.asarray(y_model) - np.asarray(y_base))[decided]
    return float(np.mean((dx == dy) + 0.5 * (dx == 0)))


def _sample_and_score(sampler: Any, tok: Any, batches: list[dict[str, Any]], combiner: Any,
                      spec: Any, G: int, key: Any) -> dict[str, Any]:
    import jax

    from rlcot.rewards import RewardInput
    from rlcot.sampling import completion_texts, trainer_batch
    out: dict[str, list] = {"texts": [], "lengths": [], "total": [], "terms": [], "seq": [],
                            "metrics": []}
    for b, batch in enumerate(batches):
        s = sampler.generate(batch["prompt_tokens_BxT"], batch["prompt_lens_B"],
                             jax.random.fold_in(key, b), num_samples=G, spec=spec)
        texts = completion_texts(tok, s, spec.stop_strings)
        B = len(batch["prompt_text"])
        tb = trainer_batch(s)
        scored = combiner(RewardInput(
            prompts=[p for p in batch["prompt_text"] for _ in range(G)], completions=texts,
            examples=[e for e in batch["example"] for _ in range(G)],
            completion_lengths=np.asarray(s.lengths_N, np.int32),
            group_ids=np.repeat(np.arange(B, dtype=np.int32), G),
            truncated=np.asarray(s.truncated_N), sequences=tb))
        out["texts"] += texts
        out["lengths"].append(np.asarray(s.lengths_N))
        out["total"].append(np.asarray(scored.total))
        out["terms"].append({k: np.asarray(v.values) for k, v in scored.components.items()})
        out["seq"].append(tb)
        out["metrics"].append((len(texts), scored.metrics))
    return out


def _mean_metrics(parts: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """Row-weighted means of the batches' '/mean' reward metrics (nested terms included),
    without the 'reward/' prefix."""
    n = sum(k for k, _ in parts)
    keys = [k for k in parts[0][1] if k.endswith("/mean") and k != "reward/total/mean"]
    return {k[len("reward/"):]: sum(w * m[k] for w, m in parts) / n for k in keys}


def run(cfg: CompareStageConfig, ctx: Any) -> dict[str, Any]:
    import jax

    from rlcot.rewards import RewardCombiner
    from rlcot.rewards.models import load_models
    from rlcot.rl.logprobs import batch_sharding, make_logprob_fn, row_shards
    from rlcot.rollout import off_policy_settings
    from rlcot.sampling import Sampler, SamplingSpec
    from rlcot.stages.generate import one_pass_pipeline
    from rlcot.stages.merge import vocab_fingerprint
    from rlcot.workdir import write_json

    write_json(ctx.dir / "config.json", dataclasses.asdict(cfg))
    t0 = time.perf_counter()
    mesh = cfg.mesh.make()
    policy = ctx.resolver.load_policy(cfg.model, mesh=mesh, seed=cfg.seed)
    base = ctx.resolver.load(cfg.baseline, mesh=mesh, seed=cfg.seed, overrides={
        k: v for k, v in cfg.model.overrides().items() if k in ("dtype", "param_dtype")})
    tok = policy.tokenizer
    if base.tokenizer is not None and vocab_fingerprint(base.tokenizer) != vocab_fingerprint(tok):
        raise ValueError(f"baseline {cfg.baseline!r} has another tokenizer than the model "
                         f"{cfg.model.source!r}")
    ro = cfg.rollout
    pipeline = one_pass_pipeline(cfg, tok)
    n_prompts = pipeline.num_kept if cfg.prompts is None else min(cfg.prompts, pipeline.num_kept)
    it = iter(pipeline.iterator())
    batches, got = [], 0
    while got < n_prompts:
        batch = next(it)
        take = min(len(batch["prompt_text"]), n_prompts - got)
        batches.append({k: v[:take] for k, v in batch.items()}
                       if take < len(batch["prompt_text"]) else batch)
        got += take
    spec = SamplingSpec(max_new_tokens=ro.max_new_tokens, temperature=ro.temperature,
                        top_k=ro.top_k, top_p=ro.top_p, min_p=ro.min_p,
                        stop_ids=tuple(tok.stop_ids), stop_strings=ro.stop_strings)
    combiner = RewardCombiner(cfg.rewards, models=load_models(cfg.rewards, ctx.resolver, mesh,
                                                              tok))
    G = ro.num_samples
    key = jax.random.key(cfg.seed)
    runs = {}
    for name, model in (("model", policy), ("baseline", base)):
        sampler = Sampler(model.cfg, model.params, tokenizer=tok, mesh=mesh)
        runs[name] = _sample_and_score(sampler, tok, batches, combiner, spec, G, key)
    combiner.close()

    # ---- KL(model || baseline) on the model's samples ---------------------------------------
    kl_parts = []
    rows_sh = batch_sharding(mesh)
    fn_model = make_logprob_fn(policy.graphdef, policy.params, mesh=mesh)
    fn_base = make_logprob_fn(base.graphdef, base.params, mesh=mesh)
    for tb in runs["model"]["seq"]:
        args = (tb.tokens_NxL, tb.positions_NxL, tb.valid_NxL)
        if len(tb.tokens_NxL) % row_shards(mesh) == 0:
            args = tuple(jax.device_put(a, rows_sh) for a in args)
        lp, lb = fn_model(policy.params, *args), fn_base(base.params, *args)
        mask = np.asarray(tb.completion_mask_NxL)
        kl_parts.append(((np.asarray(lp) - np.asarray(lb)) * mask).sum(axis=1))

    n = n_prompts * G

    def cat(name, part):
        return np.concatenate(runs[name][part])[:n]

    def terms(name):
        return {k: np.concatenate([t[k] for t in runs[name]["terms"]])[:n]
                for k in runs[name]["terms"][0]}

    tm, tb_ = terms("model"), terms("baseline")
    win_m = cat("model", "total") if cfg.win_by == "total" else tm[cfg.win_by]
    win_b = cat("baseline", "total") if cfg.win_by == "total" else tb_[cfg.win_by]
    wins, ties = win_m > win_b, win_m == win_b
    kl = np.concatenate(kl_parts)[:n]
    result: dict[str, Any] = {
        "win_rate": float(np.mean(wins + 0.5 * ties)), "tie_rate": float(np.mean(ties)),
        "total": float(np.mean(cat("model", "total"))),
        "baseline/total": float(np.mean(cat("baseline", "total"))),
        "kl": float(np.mean(kl)), "length": float(np.mean(cat("model", "lengths"))),
        "baseline/length": float(np.mean(cat("baseline", "lengths")))}
    for k in tm:
        result[k] = float(np.mean(tm[k]))
        result[f"baseline/{k}"] = float(np.mean(tb_[k]))
    for k in tm:
        if k != cfg.win_by and (a := agreement(tm[k], tb_[k], win_m, win_b)) is not None:
            result[f"agree/{k}"] = a
    for k, v in _mean_metrics(runs["model"]["metrics"]).items():
        if k.count("/") > 1:  # nested terms: true/accuracy/mean, ...
            result[k] = v
    for k, v in _mean_metrics(runs["baseline"]["metrics"]).items():
        if k.count("/") > 1:
            result[f"baseline/{k}"] = v
    with open(ctx.dir / "samples.jsonl", "w") as f:
        texts_m, texts_b = runs["model"]["texts"][:n], runs["baseline"]["texts"][:n]
        for i in range(n):
            f.write(json.dumps({"prompt_index": i // G, "sample": i % G, "model": texts_m[i],
                                "baseline": texts_b[i], "model_score": float(win_m[i]),
                                "baseline_score": float(win_b[i]), "kl": float(kl[i]),
                                "terms": {k: float(tm[k][i]) for k in tm},
                                "baseline_terms": {k: float(tb_[k][i]) for k in tb_}}) + "\n")
    return {"seed": cfg.seed, "model": cfg.model.source, "baseline": cfg.baseline,
            "prompts": n_prompts, "samples_per_prompt": G, "win_by": cfg.win_by,
            "kl_estimate": ("unbiased (temperature 1, no filters)"
                            if not off_policy_settings(ro) else
                            f"on the tempered/filtered samples ({off_policy_settings(ro)})"),
            "eval_after": result, "wall_time_s": round(time.perf_counter() - t0, 2)}
