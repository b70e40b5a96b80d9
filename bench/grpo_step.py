"""One GRPO step of rlcot against TRL's GRPOTrainer on the same configuration: seconds per phase.

    python bench/grpo_step.py                    # the configuration below, 1 warm-up + 1 timed step
    python bench/grpo_step.py --prompts 2 --samples 4 --new-tokens 32 --micro-batches 2
    python bench/grpo_step.py --no-trl           # rlcot only (also what happens without TRL)

The configuration: SmolLM2-135M-Instruct (the offline GGUF, dequantized, float32) on both sides
with the same weights (ours exported with save_hf and loaded by transformers), GRPO with
--prompts prompts x --samples samples x --new-tokens new tokens (temperature 1, no top-k/p),
--micro-batches gradient-accumulation passes, one AdamW step (lr 1e-6, gradient clipping at
1.0), no KL term, PPO clipping at 0.2, token-mean loss over the batch (TRL's default 'dapo'),
group-normalised advantages (TRL's default scale_rewards='group'), activations recomputed in
the backward pass (TRL's default gradient checkpointing; rlcot's learner.remat), and the same
reward function on both sides (rlcot's math_accuracy). TRL 1.16 runs with its defaults
otherwise, except bf16=False (the configuration is float32) and its dataset in order. The
prompts are GSM8K train questions (the 'qa' template: "Question: ...\\nAnswer:") of at most
--max-prompt-tokens tokens, the first batches of rlcot's pipeline (shuffled with seed 0); TRL
gets the same prompt strings in the same order (they tokenize to the same ids).

rlcot runs its RL stage (rlcot.loop.run: the same rollout, log-prob and update functions every
recipe uses) for --warmup + --steps steps in a temporary directory, and the phase times are its
own PhaseTimer metrics (time/*_s in metrics.jsonl). TRL's GRPOTrainer is timed by a subclass
around `_generate` (sampling) and `_generate_and_score_completions` (sampling, rewards,
advantages and any log-prob passes) and by callbacks from the start of an optimizer step to its
end; its update is the step minus `_generate_and_score_completions`. The first --warmup steps
of each side are left out (rlcot compiles its sampler, log-prob and update functions there,
PyTorch warms its allocator); the table holds the mean over the --steps timed steps.

Phases: "generation" is sampling until every row stopped or has --new-tokens tokens, with the
texts decoded; "rewards" the rest of the rollout (scoring); "log-probs" rlcot's pass that
recomputes the old log-probs with the training layout, plus advantages and the update batch
(TRL on-policy does not recompute them: it takes the detached log-probs of the update's own
forward pass); "update" the forward and backward passes of every micro-batch and the optimizer
step (rlcot: also handing the new weights to the sampler). ratio = rlcot s / TRL s (below 1:
rlcot is faster). Time it on a quiet machine: on oversubscribed cores PyTorch's OpenMP threads
lose far more than XLA's (try --torch-threads 1), and the table then measures the load.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=1, help="timed steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=1, help="untimed first steps (compile)")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--micro-batches", type=int, default=4)
    p.add_argument("--max-prompt-tokens", type=int, default=64)
    p.add_argument("--no-checkpointing", action="store_true",
                   help="keep activations for the backward pass on both sides (rlcot remat off, "
                        "TRL gradient_checkpointing=False)")
    p.add_argument("--no-trl", action="store_true", help="rlcot only")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="TRL's torch intra-op threads (default: torch's, one per core); on a "
                        "shared machine OpenMP's spinning threads can make more threads slower")
    p.add_argument("--model", default="gguf:smollm2", help="rlcot model source")
    p.add_argument("--tokenizer", default=None, help="tokenizer of the model source (for presets)")
    p.add_argument("--json", default=None, help="also write the phase times to this file")
    args = p.parse_args(argv)
    for name in ("steps", "prompts", "samples", "new_tokens", "micro_batches",
                 "max_prompt_tokens"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    rows = args.prompts * args.samples
    if rows % args.micro_batches:
        p.error(f"prompts x samples = {rows} rows must divide into {args.micro_batches} "
                f"micro-batches")
    return args


def rlcot_config(args: argparse.Namespace) -> Any:
    """The RL stage's config: rlcot's defaults with this benchmark's GRPO settings."""
    from rlcot import run_config
    c = run_config.default_config()
    c.name = "grpo_step"
    c.model.source = args.model
    c.model.tokenizer = args.tokenizer
    c.model.dtype = c.model.param_dtype = "float32"
    c.data.dataset = "gsm8k"
    c.data.template.name = "qa"
    c.data.template.instruction = ""
    c.data.max_prompt_tokens = args.max_prompt_tokens
    c.data.batch_prompts = args.prompts
    c.rollout.num_samples = args.samples
    c.rollout.max_new_tokens = args.new_tokens
    c.rollout.temperature = 1.0
    c.advantage.estimator = "grpo"
    c.advantage.std_over = "group"
    obj = c.learner.objective
    obj.policy.name = "ppo_clip"
    obj.policy.eps_low = obj.policy.eps_high = 0.2
    obj.aggregation.mode = "token_mean"
    obj.kl.placement = "none"
    c.learner.optimizer.lr = 1e-6
    c.learner.optimizer.max_grad_norm = 1.0
    c.learner.micro_batches = args.micro_batches
    c.learner.remat = not args.no_checkpointing
    c.rewards = {"accuracy": {"reward": "math_accuracy", "weight": 1.0}}
    c.train.steps = args.warmup + args.steps
    c.train.checkpoint_every = c.train.steps
    c.train.reward_workers = 0
    return c


def prompt_batches(rc: Any, tokenizer: Any, n: int) -> list[dict[str, Any]]:
    """The first n prompt batches rlcot's loop trains on (same pipeline, same seed)."""
    from rlcot import world_setup
    it = world_setup.train_pipeline(rc, tokenizer).iterator(None)
    return [next(it) for _ in range(n)]


def run_rlcot(rc: Any, resolver: Any, workdir: Path, warmup: int) -> list[dict[str, float]]:
    """Phase seconds of each timed step of rlcot's RL loop."""
    from rlcot import loop
    from rlcot.workdir import read_metrics
    loop.run(rc, workdir, resolver)
    rows = [r for r in read_metrics(workdir) if "time/step_s" in r]
    out = []
    for r in rows[warmup:]:
        generate = r["rollout/generate_s"]
        out.append({"generation": generate, "rewards": r["time/rollout_s"] - generate,
                    "log-probs": r["time/logprobs_s"], "update": r.get("time/update_s", 0.0),
                    "step": r["time/step_s"] - r.get("time/checkpoint_s", 0.0),
                    "completion_tokens_mean": r["rollout/length_mean"]})
    return out


def trl_reward(prompts: list[str], completions: list[str], answer: list[str],
               **_: Any) -> list[float]:
    """rlcot's math_accuracy, the reward of the rlcot side, for TRL's reward-function API."""
    from rlcot.rewards.base import RewardInput
    from rlcot.rewards.math_answer import math_accuracy
    out = math_accuracy(RewardInput(prompts=list(prompts), completions=list(completions),
                                    examples=[{"answer": a} for a in answer]))
    return [float(v) for v in out.values]


def hf_tokenizer(tokenizer: Any) -> Any:
    """rlcot's tokenizer (its `tokenizers` backend) as a transformers tokenizer for TRL."""
    from transformers import PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend,
                                  eos_token=tokenizer.id_to_piece(tokenizer.eos_id),
                                  pad_token=tokenizer.id_to_piece(tokenizer.pad_id))
    tok.padding_side = "left"
    return tok


def run_trl(args: argparse.Namespace, policy: Any, batches: list[dict[str, Any]],
            workdir: Path) -> list[dict[str, float]]:
    """Phase seconds of each timed step of TRL's GRPOTrainer on the same weights and prompts."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlcot.models.hf import save_hf

    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)
    save_hf(workdir / "model", policy.cfg, policy.params, dtype="float32")
    model = AutoModelForCausalLM.from_pretrained(workdir / "model", dtype=torch.float32)
    data = Dataset.from_dict({"prompt": [t for b in batches for t in b["prompt_text"]],
                              "answer": [str(e["answer"]) for b in batches
                                         for e in b["example"]]})
    steps: list[dict[str, float]] = []
    phase = {"generate": 0.0, "rollout": 0.0}

    class Timed(GRPOTrainer):
        def _generate(self, prompts):
            t0 = time.perf_counter()
            try:
                return super()._generate(prompts)
            finally:
                phase["generate"] += time.perf_counter() - t0

        def _generate_and_score_completions(self, inputs):
            t0 = time.perf_counter()
            try:
                return super()._generate_and_score_completions(inputs)
            finally:
                phase["rollout"] += time.perf_counter() - t0

    class StepTimes(TrainerCallback):
        def on_step_begin(self, *a, **k):
            phase.update(generate=0.0, rollout=0.0, t0=time.perf_counter())

        def on_step_end(self, *a, **k):
            total = time.perf_counter() - phase["t0"]
            steps.append({"generation": phase["generate"],
                          "rewards": phase["rollout"] - phase["generate"], "log-probs": 0.0,
                          "update": total - phase["rollout"], "step": total})

        def on_log(self, args, state, control, logs=None, **k):  # after on_step_end
            if steps and logs and "completions/mean_length" in logs:
                steps[-1]["completion_tokens_mean"] = float(logs["completions/mean_length"])

    rows = args.prompts * args.samples
    config = GRPOConfig(
        output_dir=str(workdir / "trl"), max_steps=args.warmup + args.steps,
        per_device_train_batch_size=rows // args.micro_batches,
        gradient_accumulation_steps=args.micro_batches, num_generations=args.samples,
        max_completion_length=args.new_tokens, temperature=1.0, learning_rate=1e-6,
        beta=0.0, bf16=False, use_cpu=True, shuffle_dataset=False, seed=0,
        gradient_checkpointing=not args.no_checkpointing, report_to="none",
        save_strategy="no", logging_steps=1, disable_tqdm=True)
    tokenizer = hf_tokenizer(policy.tokenizer)
    for b in batches:  # TRL tokenizes the prompt strings itself: to the ids rlcot samples from
        for text, ids in zip(b["prompt_text"], b["prompt_ids"]):
            if list(tokenizer(text)["input_ids"]) != [int(i) for i in ids]:
                raise RuntimeError(f"TRL's tokenizer gives other ids for the prompt {text!r}")
    trainer = Timed(model=model, reward_funcs=trl_reward, args=config, train_dataset=data,
                    processing_class=tokenizer, callbacks=[StepTimes()])
    trainer.train()
    if len(steps) != args.warmup + args.steps:
        raise RuntimeError(f"TRL ran {len(steps)} optimizer steps, expected "
                           f"{args.warmup + args.steps}")
    return steps[args.warmup:]


PHASES = (("generation", "generation (sampling, texts)"), ("rewards", "rewards (rest of rollout)"),
          ("log-probs", "log-probs (old, advantages, batch)"),
          ("update", "update (fwd + bwd x micro, AdamW)"), ("step", "step total"))


def mean_phases(steps: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(s[k] for s in steps) / len(steps) for k, _ in PHASES}


def table(ours: dict[str, float], theirs: dict[str, float] | None) -> str:
    lines = ["| phase | rlcot s | TRL s | ratio |", "|---|---:|---:|---:|"]
    for key, label in PHASES:
        if theirs is None:
            lines.append(f"| {label} | {ours[key]:.2f} | - | - |")
            continue
        ratio = f"{ours[key] / theirs[key]:.2f}" if theirs[key] > 0 else "n/a"
        lines.append(f"| {label} | {ours[key]:.2f} | {theirs[key]:.2f} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    os.environ.setdefault("RLCOT_SHARED_DATA", str(SHARED_DATA))
    with_trl = not args.no_trl and importlib.util.find_spec("trl") is not None
    if not args.no_trl and not with_trl:
        print("TRL is not installed (pip install -e '.[reference]'): rlcot side only",
              flush=True)
    import jax

    from rlcot import run_config, sources
    rc = run_config.resolve(rlcot_config(args))
    resolver = sources.Resolver(world=rc.world)
    policy = resolver.load_policy(rc.model, seed=rc.seed)
    batches = prompt_batches(rc, policy.tokenizer, args.warmup + args.steps)
    prompt_lens = [int(n) for b in batches for n in b["prompt_lens_B"]]
    print(f"{args.model}: {policy.cfg.num_params() / 1e6:.1f}M params, {args.prompts} prompts "
          f"x {args.samples} samples x {args.new_tokens} new tokens, {args.micro_batches} "
          f"micro-batches; prompts of {min(prompt_lens)}-{max(prompt_lens)} tokens "
          f"(mean {sum(prompt_lens) / len(prompt_lens):.0f}); jax {jax.__version__} on "
          f"{jax.devices()[0].device_kind}, {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    result: dict[str, Any] = {"config": vars(args), "prompt_tokens_mean":
                              sum(prompt_lens) / len(prompt_lens)}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ours = run_rlcot(rc, resolver, Path(tmp) / "rlcot", args.warmup)
        result["rlcot"] = {"steps": ours, "mean": mean_phases(ours),
                           "wall_s": time.perf_counter() - t0, "load_after": os.getloadavg()[0]}
        print(f"rlcot: {result['rlcot']['wall_s']:.0f} s for {args.warmup} warm-up + "
              f"{args.steps} timed steps (load {result['rlcot']['load_after']:.1f})", flush=True)
        theirs = None
        if with_trl:
            import torch
            import transformers
            import trl
            t0 = time.perf_counter()
            steps = run_trl(args, policy, batches, Path(tmp))
            theirs = mean_phases(steps)
            result["trl"] = {"steps": steps, "mean": theirs, "wall_s": time.perf_counter() - t0,
                             "load_after": os.getloadavg()[0],
                             "versions": {"trl": trl.__version__, "torch": torch.__version__,
                                          "transformers": transformers.__version__},
                             "torch_threads": torch.get_num_threads()}
            print(f"TRL {trl.__version__} (torch {torch.__version__}, "
                  f"{torch.get_num_threads()} threads): {result['trl']['wall_s']:.0f} s for "
                  f"{args.warmup} warm-up + {args.steps} timed steps (load "
                  f"{result['trl']['load_after']:.1f})", flush=True)
    result["table"] = table(result["rlcot"]["mean"], theirs)
    print(f"\nseconds per step, mean of {args.steps} timed step(s) after {args.warmup} "
          f"warm-up step(s) (compile excluded)\n")
    print(result["table"], flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
