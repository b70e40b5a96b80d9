"""The `generate` stage kind: K samples per prompt from a policy, scored by the rewards, written
as a dataset (data.jsonl) that later stages read as `stage:NAME`:

  select 'all'               every sample: prompt, completion, reward, correct, tokens
  select 'correct'           SFT rows (prompt, completion) of every correct, finished sample
  select 'shortest_correct'  one SFT row per prompt: its shortest correct sample (rejection
                             sampling, as in Kimi k1.5's shortest rejection sampling)
  select 'pairs'             preference rows (prompt, chosen, rejected): the shortest correct
                             sample against an incorrect one, else against a longer correct one
  select 'labelled_pairs'    preference rows labelled by the rewards: a prompt's samples in
                             disjoint pairs (1st with 2nd, 3rd with 4th, ...), the preferred one
                             drawn by Bradley-Terry from the `label_by` term's scores at
                             `label_temperature` (0: the higher score wins; rlcot.preferences):
                             "human" labels from a true preference with noise, or an AI
                             judge's labels (an ai_judge term with a judge model). Pairs with
                             identical or empty texts or equal scores are skipped (counted as
                             ties / empty). `agreement_with`: a term (e.g. the true preference
                             at weight 0) whose scores are written beside (chosen_reference,
                             rejected_reference), with the labels' agreement with it
  select 'judge'             SFT rows that teach a judge model to grade: `judge_template` filled
                             with the prompt and the sample, and " N/10", N the sample's total
                             reward mapped from `judge_range` to 0..10 (rounded)

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
SELECT = ("all", "correct", "shortest_correct", "pairs", "labelled_pairs", "judge")
JUDGE_TEMPLATE = "{prompt}{completion}\nScore:"


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
    label_by: str = "total"
    label_temperature: float = 0.0
    agreement_with: str | None = None
    judge_template: str = JUDGE_TEMPLATE
    judge_range: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self):
        if not (self.label_temperature >= 0 and np.isfinite(self.label_temperature)):
            raise ValueError(f"label_temperature must be a finite number >= 0, got "
                             f"{self.label_temperature}")
        lo, hi = self.judge_range
        if not hi > lo:
            raise ValueError(f"judge_range must be (low, high) with high > low, got "
                             f"{self.judge_range}")
        if self.select == "judge":
            from rlcot.rewards.judge import _check_template
            _check_template(self.judge_template)
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
    from rlcot.rewards.registry import parse_reward_spec
    RewardCombiner(cfg.rewards).close()  # validates the reward spec
    labels = [t.label for t in parse_reward_spec(cfg.rewards)]
    for field in ("label_by", "agreement_with"):
        name = getattr(cfg, field)
        if name is not None and name != "total" and name not in labels:
            raise ValueError(f"{field} {name!r} is not 'total' or a reward term label {labels}")
    return cfg


def sources(cfg: GenerateStageConfig) -> dict[str, str | None]:
    from rlcot.rewards.models import plan_sources
    return {"model.source": cfg.model.source, **plan_sources(cfg.rewards)}


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


def labelled_pairs(prompt: str, texts: list[str], label_N: np.ndarray,
                   reference_N: np.ndarray | None, temperature: float,
                   rng: np.random.Generator) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Preference rows of one prompt's samples (select 'labelled_pairs'), and skip counts."""
    from rlcot.preferences import bradley_terry_labels
    n = len(texts) // 2
    a, b = np.arange(0, 2 * n, 2), np.arange(1, 2 * n, 2)
    a_wins, tie = bradley_terry_labels(label_N[a], label_N[b], temperature, rng)
    rows, skipped = [], {}
    for k in range(n):
        i, j = int(a[k]), int(b[k])
        why = ("empty" if not texts[i].strip() or not texts[j].strip() else
               "tie" if texts[i].strip() == texts[j].strip() or tie[k] else None)
        if why:
            skipped[why] = skipped.get(why, 0) + 1
            continue
        c, r = (i, j) if a_wins[k] else (j, i)
        row = {"prompt": prompt, "chosen": texts[c], "rejected": texts[r],
               "chosen_score": float(label_N[c]), "rejected_score": float(label_N[r])}
        if reference_N is not None:
            row.update(chosen_reference=float(reference_N[c]),
                       rejected_reference=float(reference_N[r]))
        rows.append(row)
    return rows, skipped


def judge_rows(prompt: str, texts: list[str], total_N: np.ndarray, template: str,
               judge_range: tuple[float, float]) -> list[dict[str, Any]]:
    """SFT rows for a judge (select 'judge'): the judging prompt and " N/10"."""
    lo, hi = judge_range
    grades = np.rint(10 * np.clip((np.asarray(total_N, np.float64) - lo) / (hi - lo), 0, 1))
    return [{"prompt": template.format(prompt=prompt, completion=t, reference=""),
             "completion": f" {int(g)}/10"} for t, g in zip(texts, grades) if t.strip()]


def one_pass_pipeline(cfg: Any, tokenizer: Any) -> Any:
    """One pass over a stage's prompts (its `data` section, seeded by its `seed`), rows the
    rewards cannot judge skipped: for the stages that sample from a fixed prompt set."""
    from rlcot import world_setup
    from rlcot.data.pipeline import PipelineConfig, PromptPipeline
    from rlcot.rewards.registry import required_fields
    d = cfg.data
    return PromptPipeline(
        world_setup.data_source(cfg.world, d.dataset, d.split), tokenizer,
        PipelineConfig(batch_size=d.batch_prompts, template=d.template,
                       max_prompt_tokens=d.max_prompt_tokens, shuffle=d.shuffle, seed=cfg.seed,
                       num_epochs=1, drop_remainder=False, on_bad_rows=d.on_bad_rows,
                       required_fields=required_fields(cfg.rewards)),
        label=f"{d.dataset}/{d.split}")


def run(cfg: GenerateStageConfig, ctx: Any) -> dict[str, Any]:
    import jax

    from rlcot import preempt
    from rlcot.toyworld.cache import write_atomic
    from rlcot.rewards import RewardCombiner, RewardInput
    from rlcot.sampling import Sampler, SamplingSpec, completion_texts, trainer_batch
    from rlcot.workdir import Progress, write_json

    write_json(ctx.dir / "config.json", dataclasses.asdict(cfg))
    t0 = time.perf_counter()
    mesh = cfg.mesh.make()
    policy = ctx.resolver.load_policy(cfg.model, mesh=mesh, seed=cfg.seed)
    tok = policy.tokenizer
    d, ro = cfg.data, cfg.rollout
    pipeline = one_pass_pipeline(cfg, tok)
    n_prompts = pipeline.num_kept if cfg.prompts is None else min(cfg.prompts,
                                                                   pipeline.num_kept)
    n_batches = -(-n_prompts // d.batch_prompts)
    sampler = Sampler(policy.cfg, policy.params, tokenizer=tok, mesh=mesh)
    spec = SamplingSpec(max_new_tokens=ro.max_new_tokens, temperature=ro.temperature,
                        top_k=ro.top_k, top_p=ro.top_p, min_p=ro.min_p,
                        stop_ids=tuple(tok.stop_ids), stop_strings=ro.stop_strings)
    from rlcot.rewards.models import load_models
    combiner = RewardCombiner(cfg.rewards, models=load_models(cfg.rewards, ctx.resolver, mesh,
                                                              tok))
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
            group_ids=np.repeat(np.arange(B, dtype=np.int32), G), truncated=truncated,
            sequences=trainer_batch(out)))
        values = np.asarray(scored.filter_values(cfg.correct_by), np.float64)
        correct = (values >= cfg.correct_threshold) & ~truncated
        total = np.asarray(scored.total)
        label = np.asarray(scored.filter_values(cfg.label_by), np.float64)
        reference = (None if cfg.agreement_with is None else
                     np.asarray(scored.filter_values(cfg.agreement_with), np.float64))
        rng = np.random.default_rng([cfg.seed, b, 7])  # Bradley-Terry draws of this batch
        lines, skipped = [], {}
        for i in range(take):
            sl = slice(i * G, (i + 1) * G)
            ex = batch["example"][i]
            prompt = batch["prompt_text"][i]
            if cfg.select == "labelled_pairs":
                rows, why = labelled_pairs(prompt, texts[sl], label[sl],
                                           None if reference is None else reference[sl],
                                           cfg.label_temperature, rng)
                for k, v in why.items():
                    skipped[k] = skipped.get(k, 0) + v
            elif cfg.select == "judge":
                rows = judge_rows(prompt, texts[sl], total[sl], cfg.judge_template,
                                  cfg.judge_range)
            else:
                rows, why = rows_for_prompt(prompt, texts[sl], lengths[sl], correct[sl],
                                            total[sl], cfg.select)
                if why:
                    skipped[why] = skipped.get(why, 0) + 1
                if cfg.select == "all":
                    rows = [{**r, "example": ex} for r in rows]
            lines += [json.dumps({**r, "id": ex.get("id")}) for r in rows]
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
    if cfg.select == "labelled_pairs" and cfg.agreement_with is not None:
        parsed = [json.loads(r) for r in rows]
        decided = [r for r in parsed if r["chosen_reference"] != r["rejected_reference"]]
        counts["agreement"] = (sum(r["chosen_reference"] > r["rejected_reference"]
                                   for r in decided) / len(decided)) if decided else None
        counts["agreement_pairs"] = len(decided)
    write_atomic(ctx.dir / "data.jsonl", "".join(r + "\n" for r in rows).encode())
    return {"seed": cfg.seed, "model": cfg.model.source, "select": cfg.select, **counts,
            "data_skipped": pipeline.skipped,
            "correct_rate": counts["correct"] / max(counts["samples"], 1),
            "wall_time_s": round(time.perf_counter() - t0, 2)}
