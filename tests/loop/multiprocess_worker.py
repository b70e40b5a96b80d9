"""One process of the multi-process RL test (tests/loop/test_multiprocess.py).

    python tests/loop/multiprocess_worker.py --workdir DIR --params OUT.npz
        [--num_processes 2 --process_id P --port PORT] [--stop_at K]

Joins the run over loopback (with --num_processes > 1), runs the tiny RL stage (a random-init
preset model on the toy world) into DIR and, on process 0, writes the final policy parameters
to OUT.npz. Every process also writes OUT.rowsP.json: the prompts of the rows it sampled and
scored at each rollout (its own block of the global batch). --stop_at K: process 0 asks for a
stop right after the K-th rollout (the loop then stops every process, abandoning that step,
with the checkpoint of the step before), and the same processes run the stage again: it
resumes from that checkpoint (a new launch would do the same, compiling everything again).
--signal_at K: right after the K-th rollout each process writes OUT.readyP and waits until it
has received a signal (SIGTERM from the test: rlcot.preempt's handler, installed around the
stage as rlcot.study does); the loop then stops every process, writes the checkpoint of the
step before and the process exits with rlcot.preempt.EXIT_PREEMPTED after writing
OUT.stoppedP.json ({"step", "reason"}). --variant: the configuration: an RL stage
(tiny_rl_config), or the sft / dpo stage kind (tiny_sft_values, tiny_dpo_values; --stop_at K
then stops after the K-th optimizer step of sft, and is ignored by dpo, which has no stop check).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# 8 devices in all: the caller sets XLA_FLAGS=--xla_force_host_platform_device_count and
# JAX_PLATFORMS=cpu in the environment.


VARIANTS = ("grpo", "critic_lora_tp", "sft", "dpo")


def tiny_rl_config(steps: int, variant: str = "grpo"):
    """The tiny RL stage. variant 'critic_lora_tp': PPO with a value model (GAE advantages,
    the critic's own optimizer), LoRA adapters on the frozen base and a (data, fsdp, tensor)
    = (1, 4, 2) mesh: the weights split over tensor within a process and over fsdp across
    the processes."""
    import ml_collections as mlc
    c = mlc.ConfigDict()
    c.seed = 0
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    c.world = dict(corpus_size=300)
    c.model = dict(source="preset:tiny", tokenizer="toyworld")
    c.data = dict(dataset="toyworld", batch_prompts=8,
                  template=dict(name="r1_zero", instruction=""))
    c.rollout = dict(num_samples=2, max_new_tokens=12)
    # Rewards that vary even for an untrained model, so every step has a learning signal.
    c.rewards = {"r1_tag_count": 1.0, "repetition_penalty": 1.0}
    c.advantage = dict(estimator="grpo")
    c.learner = dict(objective=dict(policy=dict(name="ppo_clip", eps_high=0.28)),
                     optimizer=dict(lr=1e-3), micro_batches=2)
    c.train = dict(steps=steps, checkpoint_every=1, reward_workers=0)
    c.eval = dict(datasets=("toyworld:test:4",), template="r1_zero", instruction="",
                  max_new_tokens=8, batch_size=4)
    if variant == "critic_lora_tp":
        c.mesh = dict(data=1, fsdp=4, tensor=2)
        c.advantage = dict(estimator="gae")
        c.learner.value = dict(optimizer=dict(lr=1e-3))
        c.learner.lora = dict(enabled=True, rank=4, alpha=8.0)
        # No KL term: where the policy equals its reference (the LoRA base, at the start) its
        # gradient is float rounding (1-process: exactly 0, the update's forward and the
        # log-prob pass agree bit for bit; 2 processes: ~1e-7), which Adam turns into +-lr
        # moves of every element, so the runs would differ by ~lr by design.
    elif variant != "grpo":
        raise ValueError(f"unknown variant {variant!r}; one of {VARIANTS}")
    return c


def tiny_sft_values(steps: int) -> dict:
    """The `sft` stage kind on the toy world's corpus: a random-init preset model, 16 rows a
    step in 2 micro-batches over the 8 devices, evaluated at the end."""
    return dict(model=dict(source="preset:tiny", tokenizer="toyworld"), seed=0,
                mesh=dict(data=1, fsdp=-1, tensor=1), world=dict(corpus_size=300),
                data=dict(dataset="toyworld_corpus"),
                optimizer=dict(learning_rate=1e-3, micro_batches=2),
                train=dict(steps=steps, batch_size=16, log_every=1, checkpoint_every=1),
                eval=dict(datasets=("toyworld:test:4",), template="r1_zero", instruction="",
                          max_new_tokens=8, batch_size=4))


def tiny_dpo_values(steps: int, pairs: str) -> dict:
    """The `dpo` stage kind on `pairs` (write_toy_pairs), otherwise as tiny_sft_values."""
    values = tiny_sft_values(steps)
    values["data"] = dict(dataset=f"jsonl:{pairs}", limit=64)
    return values


def write_toy_pairs(path: Path, world: dict) -> None:
    """Preference pairs from the toy corpus: a document's completion is chosen, the next
    document's rejected (written atomically: every process writes the same file)."""
    import os

    from rlcot.toyworld.corpus import WorldConfig, build_corpus
    docs = build_corpus(WorldConfig(**world), 80)
    lines = [json.dumps({"prompt": d.prompt, "chosen": d.completion,
                         "rejected": docs[(i + 1) % len(docs)].completion})
             for i, d in enumerate(docs)]
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--params", required=True)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--num_processes", type=int, default=1)
    ap.add_argument("--process_id", type=int, default=0)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--stop_at", type=int, default=0)
    ap.add_argument("--variant", default="grpo", choices=VARIANTS)
    ap.add_argument("--signal_at", type=int, default=0)
    ap.add_argument("--checkpoint_every", type=int, default=1)
    args = ap.parse_args()
    import faulthandler
    # A hung process prints where it is and ends (before the test gives up on it, at 420 s).
    faulthandler.dump_traceback_later(360, exit=True)

    from rlcot import distributed
    launch = (distributed.Launch(f"127.0.0.1:{args.port}", args.num_processes, args.process_id)
              if args.num_processes > 1 else distributed.Launch())
    distributed.initialize(launch, timeout_s=60)

    import jax
    import numpy as np
    jax.config.update("jax_default_matmul_precision", "highest")
    from rlcot import checkpoint, loop, preempt, rollout, run_config, sources

    saved = {}
    save = checkpoint.Checkpointer.save

    def keep_last(self, step, state, meta):  # the final train state is the last one saved
        save(self, step, state, meta)
        saved["state"] = state

    checkpoint.Checkpointer.save = keep_last
    collect, scored = rollout.collect, []

    def collect_and_stop(*a, **kw):
        out = collect(*a, **kw)
        G = kw["num_samples"]
        scored.append({"rows": len(out.scores_N),
                       "prompts": [e["question"] for e in out.examples[::G]]})
        if len(scored) == args.stop_at and jax.process_index() == 0:
            preempt.request_stop("test")  # seen by every process at the loop's next check
        if len(scored) == args.signal_at:
            Path(f"{args.params}.ready{jax.process_index()}").touch()
            deadline = time.monotonic() + 120
            while preempt._requested is None and time.monotonic() < deadline:
                time.sleep(0.05)  # the signal's handler runs between two of these
        return out

    rollout.collect = collect_and_stop

    if args.variant in ("sft", "dpo"):
        from rlcot import sft
        from rlcot.stages import dpo as dpo_stage
        from rlcot.stages import sft as sft_stage
        from rlcot.study import StageContext
        stage = sft_stage
        values = tiny_sft_values(args.steps)
        if args.variant == "dpo":
            stage, pairs = dpo_stage, Path(args.workdir).parent / "pairs.jsonl"
            values = tiny_dpo_values(args.steps, str(pairs))
            write_toy_pairs(pairs, values["world"])
        values["train"]["checkpoint_every"] = args.checkpoint_every
        cfg = stage.resolve(values)
        Path(args.workdir).mkdir(parents=True, exist_ok=True)  # as rlcot.study makes it
        ctx = StageContext("sft", Path(args.workdir), Path(args.workdir).parent,
                           sources.Resolver(world=cfg.world))
        make_train_step, done = sft.make_train_step, []

        def make_and_stop(*a, **kw):  # --stop_at K: a stop request after the K-th step
            step_fn = make_train_step(*a, **kw)

            def step(*a, **kw):
                out = step_fn(*a, **kw)
                done.append(1)
                if len(done) == args.stop_at and jax.process_index() == 0:
                    preempt.request_stop("test")
                return out
            return step

        sft.make_train_step = make_and_stop

        def run() -> None:
            with preempt.on_signals():
                stage.run(cfg, ctx)
    else:
        config = tiny_rl_config(args.steps, args.variant)
        config.train.checkpoint_every = args.checkpoint_every
        rc = run_config.resolve(config)

        def run() -> None:
            with preempt.on_signals():  # as rlcot.study runs a stage
                loop.run(rc, args.workdir, sources.Resolver(world=rc.world))

    try:
        run()
    except preempt.Preempted as e:
        if args.signal_at:
            with open(f"{args.params}.stopped{jax.process_index()}.json", "w") as f:
                json.dump({"step": e.step, "reason": e.reason}, f)
            return preempt.EXIT_PREEMPTED
        if not args.stop_at:
            raise
        preempt._requested = None  # the stop was served; the run starts again and resumes
        run()
    with open(f"{args.params}.rows{jax.process_index()}.json", "w") as f:
        json.dump(scored, f)
    flat = {jax.tree_util.keystr(path): distributed.gather_array(x)
            for path, x in jax.tree_util.tree_flatten_with_path(saved["state"].params)[0]}
    if distributed.is_primary():
        np.savez(args.params, **flat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
