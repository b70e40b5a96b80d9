"""The `generate` stage kind: K samples per prompt from a policy, scored by the rewards, written
as a dataset (data.jsonl) that later stages read as `stage:NAME`:

  select 'all'               every sample: prompt, completion, reward, correct, tokens
  select 'correct'           SFT rows (prompt, completion) of every correct, finished sample
  select 'shortest_correct'  one SFT row per prompt: its shortest correct sample (rejection
                             sampling, as in Kimi k1.5's shortest rejection sampling)
  select 'pairs'             preference rows (prompt, chosen, rejected): the shortest correct
                             sample against an incorrect one, else against a longer correct one

Correct means the `correct_by` reward term (default: the accuracy term) reaches
`correct_threshold` on a sample that ended by itself (not truncated). Prompts without a usable
row, and pairs whose two texts are empty or identical, are skipped and counted. Each batch of
prompts is written as its own part file, so an interrupted stage resumes after the last part
(every key is derived from (seed, batch)); a stop request (rlcot.preempt) ends it after the
current batch's part is written. Malformed prompt rows are skipped and counted
(`data.on_bad_rows`, rlcot.data.pipeline).
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
SELECT = ("all", "correct", "shortest_correct", "pairs")


@dataclasses.dataclass(frozen=True)
class GenerateStageConfig:
    model: run_config.ModelSection
    rewards: Mapping[str, Any]
    seed: int = 0
    mesh: MeshConfig = MeshConfig()
    world: WorldConfig = WorldConfig()
    data: run_config.DataSection = run_config.DataSection(shuffle=False)
    rollout: run_config.RolloutSection = run_config.RolloutSection()
    prompts: int | None = None          # None: one pass over the split
    select: str = "shortest_correct"
    correct_by: str = "accuracy"
    correct_threshold: float = 1.0

    def __post_init__(self):
        if self.select not in SELECT:
            raise ValueError(f"select must be one of {SELECT}, got {self.select!r}")
        if self.prompts is not None and self.prompts < 1:
            raise ValueError(f"prompts must be >= 1 or None, got {self.prompts}")
        if not self.rewards:
            raise ValueError("a generate stage needs rewards to score its samples")


def inherited(top: dict[str, Any]) -> dict[str, Any]:
    return {k: top[k] for k in ("seed", "mesh", "world", "model", "data", "rollout", "rewards")
            if k in top}


def resolve(values: dict[str, Any]) -> GenerateStageConfig:
    from rlcot.rewards import RewardCombiner
    cfg = run_config.build(GenerateStageConfig, values, "stage")
    cfg.model.check()
    RewardCombiner(cfg.rewards).close()  # validates the reward spec
    return cfg


def sources(cfg: GenerateStageConfig) -> dict[str, str | None]:
    return {"model.source": cfg.model.source}


def defaults(**fields: Any) -> Any:
    from ml_collections import config_dict
    return config_dict.ConfigDict({"kind": "generate", **fields})


def rows_for_prompt(prompt: str, texts: list[str], lengths: np.ndarray, correct: np.ndarray,
                    rewards: np.ndarray, select: str) -> tuple[list[dict[str, Any]], str | None]:
    """The dataset rows of one prompt's K samples, and why none was made (or None)."""
    K = len(texts)
    ok = [i for i in range(K) if correct[i] and texts[i].strip()]
    if select == "all":
        return [{"prompt": prompt, "completion": texts[i], "reward": float(rewards[i]),
                 "correct": bool(correct[i]), "tokens": int(lengths[i])} for i in range(K)], None
    if not ok:
        return [], "no_correct"
    if select == "correct":
        return [{"prompt": prompt, "completion": texts[i]} for i in ok], None
    best = min(ok, key=lambda i: (lengths[i], i))
    if select == "shortest_correct":
        return [{"prompt": prompt, "completion": texts[best], "tokens": int(lengths[best])}], None
    wrong = [i for i in range(K) if not correct[i] and texts[i].strip()]
    longer = [i for i in ok if lengths[i] > lengths[best]]
    pool = wrong or longer
    if not pool:
        return [], "no_rejected"
    rej = max(pool, key=lambda i: (lengths[i], -i))
    if texts[rej].strip() == texts[best].strip():
        return [], "identical"
    return [{"prompt": prompt, "chosen": texts[best], "rejected": texts[rej],
             "chosen_tokens": int(lengths[best]), "rejected_tokens": int(lengths[rej]),
             "rejected_correct": bool(correct[rej])}], None


def run(cfg: GenerateStageConfig, ctx: Any) -> dict[str, Any]:
    import jax

    from rlcot import preempt, world_setup
    from rlcot.rewards.registry import required_fields
    from rlcot.toyworld.cache import write_atomic
    from rlcot.data.pipeline import PipelineConfig, PromptPipeline
    from rlcot.rewards import RewardCombiner, RewardInput
    from rlcot.sampling import Sampler, SamplingSpec, completion_texts
    from rlcot.workdir import Progress, write_json

    write_json(ctx.dir / "config.json", dataclasses.asdict(cfg))
    t0 = time.perf_counter()
    mesh = cfg.mesh.make()
    policy = ctx.resolver.load_policy(cfg.model, mesh=mesh, seed=cfg.seed)
    tok = policy.tokenizer
    d, ro = cfg.data, cfg.rollout
    pipeline = PromptPipeline(
        world_setup.data_source(cfg.world, d.dataset, d.split), tok,
        PipelineConfig(batch_size=d.batch_prompts, template=d.template,
                       max_prompt_tokens=d.max_prompt_tokens, shuffle=d.shuffle, seed=cfg.seed,
                       num_epochs=1, drop_remainder=False, on_bad_rows=d.on_bad_rows,
                       required_fields=required_fields(cfg.rewards)),
        label=f"{d.dataset}/{d.split}")
    n_prompts = pipeline.num_kept if cfg.prompts is None else min(cfg.prompts,
                                                                   pipeline.num_kept)
    n_batches = -(-n_prompts // d.batch_prompts)
    sampler = Sampler(policy.cfg, policy.params, tokenizer=tok, mesh=mesh)
    spec = SamplingSpec(max_new_tokens=ro.max_new_tokens, temperature=ro.temperature,
                        top_k=ro.top_k, top_p=ro.top_p, min_p=ro.min_p,
                        stop_ids=tuple(tok.stop_ids), stop_strings=ro.stop_strings)
    combiner = RewardCombiner(cfg.rewards)
    parts = ctx.dir / "parts"
    parts.mkdir(exist_ok=True)
    key = jax.random.key(cfg.seed)
    G = ro.num_samples
    it = iter(pipeline.iterator())
    progress = Progress(n_batches, desc=ctx.name)
    for b in range(n_batches):
        batch = next(it)
        part = parts / f"batch{b:06d}.jsonl"
        if part.is_file():
            progress.update({})
            continue
        if preempt.stop_requested():  # every part so far is written: nothing else to keep
            progress.close()
            combiner.close()
            raise preempt.Preempted(f"stage {ctx.name}", b)
        take = min(d.batch_prompts, n_prompts - b * d.batch_prompts)
        out = sampler.generate(batch["prompt_tokens_BxT"], batch["prompt_lens_B"],
                               jax.random.fold_in(key, b), num_samples=G, spec=spec)
        texts = completion_texts(tok, out, spec.stop_strings)
        lengths = np.asarray(out.lengths_N)
        truncated = np.asarray(out.truncated_N)
        B = len(batch["prompt_text"])
        scored = combiner(RewardInput(
            prompts=[p for p in batch["prompt_text"] for _ in range(G)], completions=texts,
            examples=[e for e in batch["example"] for _ in range(G)],
            completion_lengths=lengths.astype(np.int32),
            group_ids=np.repeat(np.arange(B, dtype=np.int32), G), truncated=truncated))
        values = np.asarray(scored.filter_values(cfg.correct_by), np.float64)
        correct = (values >= cfg.correct_threshold) & ~truncated
        lines, skipped = [], {}
        for i in range(take):
            sl = slice(i * G, (i + 1) * G)
            rows, why = rows_for_prompt(batch["prompt_text"][i], texts[sl], lengths[sl],
                                        correct[sl], np.asarray(scored.total)[sl], cfg.select)
            if why:
                skipped[why] = skipped.get(why, 0) + 1
            lines += [json.dumps({**r, "id": batch["example"][i].get("id")}) for r in rows]
        write_atomic(part, (json.dumps({"skipped": skipped, "samples": take * G,
                                        "correct": int(correct[:take * G].sum())}) + "\n"
                            + "".join(line + "\n" for line in lines)).encode())
        progress.update({})
    progress.close()
    combiner.close()
    counts = {"prompts": n_prompts, "samples": 0, "correct": 0, "rows": 0, "skipped": {}}
    rows = []
    for b in range(n_batches):
        head, *body = (parts / f"batch{b:06d}.jsonl").read_text().splitlines()
        h = json.loads(head)
        counts["samples"] += h["samples"]
        counts["correct"] += h["correct"]
        for k, v in h["skipped"].items():
            counts["skipped"][k] = counts["skipped"].get(k, 0) + v
        rows += body
    counts["rows"] = len(rows)
    write_atomic(ctx.dir / "data.jsonl", "".join(r + "\n" for r in rows).encode())
    return {"seed": cfg.seed, "model": cfg.model.source, "select": cfg.select, **counts,
            "data_skipped": pipeline.skipped,
            "correct_rate": counts["correct"] / max(counts["samples"], 1),
            "wall_time_s": round(time.perf_counter() - t0, 2)}
