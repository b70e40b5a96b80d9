"""The evaluation runner: prompts -> greedy and sampled completions -> graded -> metrics per benchmark.

Used standalone (rlcot.evaluation.cli.run_eval) and inside the RL loop, which passes its
already-compiled sampler as `generate`. Results are a pure function of (model, eval sets,
EvalConfig, rng): each benchmark's randomness is rng folded with a hash of its label, each
pass's with the pass, each generate call's with its batch index, so adding or reordering
benchmarks changes no other benchmark's numbers. (They do depend on batch_size: the sampler
draws a row's randomness from its row in the call.)
"""

from __future__ import annotations

import inspect
import logging
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from rlcot.evaluation import metrics as M
from rlcot.evaluation.config import EvalConfig, EvalSet, default_scorer
from rlcot.evaluation.prompts import EvalPrompts, build_prompts, prompt_id
from rlcot.evaluation.results import BenchmarkResult, EvalResult
from rlcot.sampling.outputs import SampleOutput, completion_texts, left_pad
from rlcot.sampling.spec import SamplingSpec

log = logging.getLogger(__name__)

# generate(prompt_tokens_BxP, prompt_lens_B, rng, num_samples, spec) -> SampleOutput with rows
# prompt-major (row b * G + g): Sampler.generate, or the RL loop's compiled sampler.
Generate = Callable[[np.ndarray, np.ndarray, jax.Array, int, SamplingSpec], SampleOutput]


def make_generate(model: Any, tokenizer: Any, mesh: jax.sharding.Mesh | None = None) -> Generate:
    """Sampler.generate for a model: a LoadedModel, or a (graphdef, params, cfg) tuple."""
    from rlcot.sampling.sampler import Sampler
    if isinstance(model, tuple):
        if len(model) != 3:
            raise ValueError(f"model must be (graphdef, params, cfg), got a {len(model)}-tuple")
        _, params, cfg = model
    else:
        params, cfg = model.params, model.cfg
    return Sampler(cfg, params, tokenizer=tokenizer, mesh=mesh).generate


def _key(rng: Any) -> jax.Array:
    if isinstance(rng, (int, np.integer)):
        return jax.random.key(int(rng))
    if not isinstance(rng, jax.Array):
        raise TypeError(f"rng must be a jax PRNG key or an int seed, got {type(rng).__name__}")
    return rng


def _fold(key: jax.Array, *data: int) -> jax.Array:
    for d in data:
        key = jax.random.fold_in(key, d)
    return key


# -- generation ---------------------------------------------------------------------------------

def run_pass(prompts: EvalPrompts, generate: Generate, tokenizer: Any, spec: SamplingSpec,
             num_samples: int, prompts_per_call: int, key: jax.Array, desc: str,
             progress: bool | None = None) -> dict[str, Any]:
    """G completions for every prompt, prompt-major: texts [N], lengths_N, truncated_N."""
    from tqdm import tqdm
    G, B = num_samples, len(prompts)
    texts: list[str] = []
    lengths, truncated = [], []
    t0 = time.perf_counter()
    bar = tqdm(total=B * G, desc=desc, unit="completion", dynamic_ncols=True,
               disable=None if progress is None else not progress)
    try:
        for call, start in enumerate(range(0, B, prompts_per_call)):
            ids = prompts.ids[start:start + prompts_per_call]
            tokens_BxP, lens_B = left_pad(ids, tokenizer.pad_id)
            out = generate(tokens_BxP, lens_B, _fold(key, call), G, spec)
            n = len(ids) * G
            lengths_N = np.asarray(jax.device_get(out.lengths_N))
            if lengths_N.shape != (n,) or out.num_samples != G:
                raise ValueError(f"generate returned {lengths_N.shape[0]} rows with num_samples="
                                 f"{out.num_samples} for {len(ids)} prompts x {G} samples")
            texts += completion_texts(tokenizer, out, spec.stop_strings)
            lengths.append(lengths_N)
            truncated.append(np.asarray(jax.device_get(out.truncated_N)))
            bar.update(n)
            if bar.disable:  # no terminal (a log file): one line per call instead of a bar
                log.info("%s: %d/%d completions, %.0fs", desc, len(texts), B * G,
                         time.perf_counter() - t0)
    finally:
        bar.close()
    return {"texts": texts, "lengths_N": np.concatenate(lengths).astype(np.int64),
            "truncated_N": np.concatenate(truncated).astype(bool)}


# -- grading ------------------------------------------------------------------------------------

def _math_equivalent(a: str, b: str) -> bool:
    from rlcot.rewards.math_answer import answers_equivalent
    return answers_equivalent(a, b)[0]


def _exact_equivalent(a: str, b: str) -> bool:
    return a.strip() == b.strip()


def _answers(scorer: str, texts: Sequence[str], details: Sequence[Mapping[str, Any]]
             ) -> tuple[list[str | None] | None, M.Equivalent | None]:
    """Extracted final answers and how to compare them (None for scorers without answers)."""
    if scorer == "math_accuracy":
        from rlcot.rewards.math_answer import extract_answer
        return [extract_answer(t) for t in texts], _math_equivalent
    if scorer == "reasoning_gym":
        return [d.get("answer") for d in details], _exact_equivalent
    return None, None


def grade(prompts: EvalPrompts, comps: Mapping[str, Any], num_samples: int, scorer: str,
          check_format: bool, pool: Any = None) -> dict[str, Any]:
    """Scores N = B * G completions: values_N, correct_N (value >= 1), answers, formatted_N."""
    from rlcot.rewards.base import RewardInput
    from rlcot.rewards.format import r1_format
    from rlcot.rewards.registry import REWARDS
    G = num_samples
    batch = RewardInput(
        prompts=[t for t in prompts.texts for _ in range(G)], completions=comps["texts"],
        examples=[e for e in prompts.examples for _ in range(G)],
        completion_lengths=comps["lengths_N"],
        group_ids=np.repeat(np.arange(len(prompts)), G), truncated=comps["truncated_N"])
    fn = REWARDS[scorer]
    kwargs = {"pool": pool} if "pool" in inspect.signature(fn).parameters else {}
    out = fn(batch, **kwargs)
    answers, equivalent = _answers(scorer, comps["texts"], out.details)
    formatted = r1_format(batch, mode="strict").values >= 1.0 if check_format else None
    return {"values_N": out.values, "correct_N": out.values >= 1.0, "details": out.details,
            "answers": answers, "equivalent": equivalent, "formatted_N": formatted,
            "metrics": dict(out.metrics)}


def pass_metrics(kind: str, graded: Mapping[str, Any], comps: Mapping[str, Any],
                 num_samples: int, pass_ks: Sequence[int]) -> dict[str, float]:
    """The metrics of one pass ('greedy' or 'sampled'), keys prefixed with the pass."""
    G = num_samples
    correct_BxG = graded["correct_N"].reshape(-1, G)
    out: dict[str, float] = {}
    if kind == "greedy":
        out["pass@1"] = M.greedy_pass_at_1(correct_BxG[:, 0])
    else:
        out[f"avg@{G}"] = M.avg_at_k(correct_BxG)
        for k in pass_ks:
            out[f"pass@{k}"] = M.mean_pass_at_k(correct_BxG, k)
        if graded["answers"] is not None:
            answers_BxG = [graded["answers"][b * G:(b + 1) * G] for b in range(len(correct_BxG))]
            out[f"maj@{G}"] = M.maj_at_k(answers_BxG, correct_BxG, graded["equivalent"])
    if graded["answers"] is not None:
        out["answered"] = M.rate(np.array([a is not None for a in graded["answers"]]))
    if graded["formatted_N"] is not None:
        out["format"] = M.rate(graded["formatted_N"])
    out["trunc"] = M.rate(comps["truncated_N"])
    out["len"] = M.mean_length(comps["lengths_N"])
    return {f"{kind}/{k}": v for k, v in out.items()}


def pass_records(kind: str, prompts: EvalPrompts, comps: Mapping[str, Any],
                 graded: Mapping[str, Any], num_samples: int) -> list[dict[str, Any]]:
    """One JSON-safe record per completion; the prompt text is on each prompt's sample 0."""
    G, records = num_samples, []
    for n, text in enumerate(comps["texts"]):
        b, g = divmod(n, G)
        ex = prompts.examples[b]
        rec = {"pass": kind, "id": prompt_id(ex, int(prompts.rows[b])),
               "row": int(prompts.rows[b]), "sample": g, "completion": text,
               "answer": None if graded["answers"] is None else graded["answers"][n],
               "gold": ex.get("answer"), "correct": bool(graded["correct_N"][n]),
               "reward": float(graded["values_N"][n]), "length": int(comps["lengths_N"][n]),
               "truncated": bool(comps["truncated_N"][n])}
        if graded["formatted_N"] is not None:
            rec["format"] = bool(graded["formatted_N"][n])
        status = graded["details"][n].get("status", "ok")
        if status != "ok":
            rec["status"] = status
        if g == 0:
            rec["prompt"] = prompts.texts[b]
        records.append(rec)
    return records


# -- the runner ---------------------------------------------------------------------------------

def evaluate_set(eval_set: EvalSet, tokenizer: Any, cfg: EvalConfig, generate: Generate,
                 key: jax.Array, *, pool: Any = None, progress: bool | None = None
                 ) -> BenchmarkResult:
    label, timings = eval_set.label, {}
    t0 = time.perf_counter()
    prompts = build_prompts(eval_set, tokenizer, cfg)
    timings["prompts"] = time.perf_counter() - t0
    scorer = eval_set.scorer or default_scorer(eval_set.name)
    stop_ids = tuple(getattr(tokenizer, "stop_ids", (tokenizer.eos_id,)))
    stops = cfg.resolved_stop_strings
    passes = []
    if cfg.greedy:
        passes.append(("greedy", 1, cfg.greedy_spec(stop_ids, stops), cfg.batch_size))
    if cfg.sampled:
        G = cfg.num_samples
        passes.append(("sampled", G, cfg.sampled_spec(stop_ids, stops),
                       max(1, cfg.batch_size // G)))
    metrics: dict[str, float] = {}
    records: list[dict[str, Any]] = []
    for p, (kind, G, spec, per_call) in enumerate(passes):
        t0 = time.perf_counter()
        comps = run_pass(prompts, generate, tokenizer, spec, G, per_call, _fold(key, p),
                         f"{label} {kind}", progress)
        timings[kind] = time.perf_counter() - t0
        t0 = time.perf_counter()
        graded = grade(prompts, comps, G, scorer, cfg.resolved_check_format, pool)
        timings[f"score_{kind}"] = time.perf_counter() - t0
        metrics.update(pass_metrics(kind, graded, comps, G, cfg.resolved_pass_ks))
        records += pass_records(kind, prompts, comps, graded, G)
        tokens = int(comps["lengths_N"].sum())
        log.info("%s %s: %d prompts x %d, %d tokens in %.1fs (%.0f tok/s), scored in %.1fs",
                 label, kind, len(prompts), G, tokens, timings[kind],
                 tokens / max(timings[kind], 1e-9), timings[f"score_{kind}"])
    return BenchmarkResult(label, len(prompts), prompts.num_dropped, metrics, records, timings)


def evaluate(model: Any, tokenizer: Any, eval_sets: Sequence[EvalSet], cfg: EvalConfig, *,
             rng: jax.Array | int, mesh: jax.sharding.Mesh | None = None,
             generate: Generate | None = None, progress: bool | None = None) -> EvalResult:
    """Evaluates `model` (a LoadedModel or (graphdef, params, cfg); None when `generate` is
    given) on each eval set; see the module docstring for what fixes the randomness.

    progress: tqdm bars (None: only on a terminal)."""
    if not eval_sets:
        raise ValueError("evaluate: no eval sets given")
    labels = [s.label for s in eval_sets]
    if len(set(labels)) != len(labels):
        raise ValueError(f"evaluate: duplicate eval sets {labels}")
    if generate is None:
        if model is None:
            raise ValueError("evaluate needs a model or a generate function")
        generate = make_generate(model, tokenizer, mesh)
    key = _key(rng)
    pool = None
    if cfg.reward_workers:
        from rlcot.rewards.pool import RewardPool
        pool = RewardPool(cfg.reward_workers, preload=("rlcot.rewards.math_answer", "math_verify"))
    try:
        results = {}
        for s in eval_sets:
            # The label's hash, not the position: other sets in the list do not matter.
            set_key = _fold(key, zlib.crc32(s.label.encode()) & 0x7FFFFFFF)
            results[s.label] = evaluate_set(s, tokenizer, cfg, generate, set_key, pool=pool,
                                            progress=progress)
    finally:
        if pool is not None:
            pool.close()
    return EvalResult(results)
