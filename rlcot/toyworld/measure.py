"""Measures a toy model on the held-out split (greedy accuracy, pass@k, behaviour rates) and
runs a crude rejection-sampling fine-tuning probe of whether the world is RL-amenable.

    python -m rlcot.toyworld.measure [--rft_rounds 4] [--cache_dir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from typing import Any

import jax
import numpy as np

from rlcot import sft
from rlcot.toyworld.checks import is_correct, strict_format, summarize
from rlcot.toyworld.corpus import WorldConfig, examples, prompt_text
from rlcot.toyworld.decode import generate
from rlcot.toyworld.pretrain import BaseModel, PretrainConfig, load_base_model


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k)."""
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def measure(model: BaseModel, params: Any, exs: list[dict[str, str]], *, k: int = 8,
            max_new_tokens: int = 192, seed: int = 0) -> dict[str, Any]:
    """Greedy rates (summarize) and sampled (temperature 1) rates with pass@1 and pass@k."""
    tok = model.tokenizer
    prompts = [tok.encode(prompt_text(e["question"])) for e in exs]
    answers = [e["answer"] for e in exs]
    run = lambda ps, **kw: generate(model.cfg, model.graphdef, params, ps,  # noqa: E731
                                    max_new_tokens=max_new_tokens, eos_id=tok.eos_id, **kw)
    t0 = time.perf_counter()
    greedy = run(prompts)
    texts = [tok.decode(c, skip_special=True) for c in greedy]
    out = {"greedy": summarize(texts, answers, [len(c) for c in greedy])}
    t1 = time.perf_counter()
    sampled = run([p for p in prompts for _ in range(k)], temperature=1.0, seed=seed)
    texts = [tok.decode(c, skip_special=True) for c in sampled]
    rep = [a for a in answers for _ in range(k)]
    out["sampled"] = summarize(texts, rep, [len(c) for c in sampled])
    correct = np.array([is_correct(t, a) for t, a in zip(texts, rep)]).reshape(len(exs), k)
    out["sampled"][f"pass@{k}"] = float(np.mean([pass_at_k(k, int(c), k) for c in correct.sum(1)]))
    out["greedy_s"], out["sampled_s"] = t1 - t0, time.perf_counter() - t1
    return out


def rejection_finetune(model: BaseModel, world: WorldConfig, *, rounds: int = 4,
                       prompts_per_round: int = 128, k: int = 8, sft_steps: int = 20,
                       batch_size: int = 32, learning_rate: float = 5e-4,
                       select: str = "correct", eval_examples: list[dict] | None = None,
                       max_new_tokens: int = 192, seed: int = 0) -> tuple[Any, list[dict]]:
    """Each round: sample k completions for fresh train prompts, keep the correct ones in the
    strict format (select='correct') or each prompt's shortest such one ('shortest'), and
    fine-tune on them. Returns the final parameters and one log entry per round."""
    if select not in ("correct", "shortest"):
        raise ValueError(f"select must be 'correct' or 'shortest', got {select!r}")
    tok = model.tokenizer
    train = examples(world, "train", rounds * prompts_per_round)
    params = model.params
    optimizer = sft.make_optimizer(sft.SFTConfig(learning_rate=learning_rate,
                                                 total_steps=rounds * sft_steps,
                                                 end_lr_ratio=1.0, max_grad_norm=1.0))
    step = sft.make_train_step(optimizer, remat=True)
    opt_state = optimizer.init(params)
    rng = np.random.default_rng(seed)
    log = []
    for r in range(rounds):
        t0 = time.perf_counter()
        exs = train[r * prompts_per_round:(r + 1) * prompts_per_round]
        prompts = [tok.encode(prompt_text(e["question"])) for e in exs]
        samples = generate(model.cfg, model.graphdef, params,
                           [p for p in prompts for _ in range(k)], max_new_tokens=max_new_tokens,
                           eos_id=tok.eos_id, temperature=1.0, seed=seed * 1000 + r)
        keep = []
        for i, e in enumerate(exs):
            good = []
            for c in samples[i * k:(i + 1) * k]:
                text = tok.decode(c, skip_special=True)
                finished = bool(c) and c[-1] == tok.eos_id
                if finished and is_correct(text, e["answer"]) and strict_format(text):
                    good.append(c[:-1])
            if select == "shortest" and good:
                good = [min(good, key=len)]
            keep += [(prompts[i], c) for c in good]
        t1 = time.perf_counter()
        for _ in range(sft_steps if keep else 0):
            idx = rng.choice(len(keep), size=batch_size, replace=len(keep) < batch_size)
            width = -(-max(len(keep[j][0]) + len(keep[j][1]) + 1 for j in idx) // 32) * 32
            batch = sft.collate([keep[j] for j in idx], pad_id=tok.pad_id, eos_id=tok.eos_id,
                                length=width)
            params, opt_state, _ = step(model.graphdef, params, opt_state, batch)
        jax.block_until_ready(params)
        entry = {"round": r + 1, "kept": len(keep), "sample_s": t1 - t0,
                 "sft_s": time.perf_counter() - t1}
        if eval_examples is not None:
            entry["eval"] = measure(model, params, eval_examples, k=1,
                                    max_new_tokens=max_new_tokens)["greedy"]
        log.append(entry)
    return params, log


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache_dir", default=None)
    ap.add_argument("--n_test", type=int, default=256)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--max_new_tokens", type=int, default=192)
    ap.add_argument("--rft_rounds", type=int, default=0)
    ap.add_argument("--pretrain", default="{}", help="JSON overrides of PretrainConfig fields")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    world = WorldConfig()
    pre = dataclasses.replace(PretrainConfig(), **json.loads(args.pretrain))
    t0 = time.perf_counter()
    model = load_base_model(world, pre, args.cache_dir)
    report: dict[str, Any] = {"load_s": time.perf_counter() - t0, "cached": model.cached,
                              "pretrain": {k: model.info[k] for k in (
                                  "total_s", "train_s", "final_loss", "tokens_per_sequence_mean",
                                  "completion_tokens_mean", "prompt_tokens_mean")}}
    test = examples(world, "test", args.n_test)
    report["base"] = measure(model, model.params, test, k=args.k,
                             max_new_tokens=args.max_new_tokens)
    print(json.dumps(report, indent=1), flush=True)
    if args.rft_rounds:
        t0 = time.perf_counter()
        _, log = rejection_finetune(model, world, rounds=args.rft_rounds, eval_examples=test,
                                    max_new_tokens=args.max_new_tokens)
        print(json.dumps({"rft": log, "rft_s": time.perf_counter() - t0}, indent=1))


if __name__ == "__main__":
    main()
