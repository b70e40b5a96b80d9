"""The `dpo` stage kind: direct preference optimisation of a policy on (prompt, chosen, rejected)
pairs (rlcot.dpo's losses and jitted step), exactly resumable.

Data (`data.dataset`):
  'stage:NAME'   the pairs written by an earlier `generate` stage with select='pairs'
  'jsonl:PATH'   rows with "prompt", "chosen" and "rejected" texts

The policy is `model.source` (default: the previous model stage); the reference is
`model.reference` (default: the policy's starting point, i.e. `model.source` before any DPO
step). The reference's sequence log-probs of every pair are computed once, before the first
step, and stored in DIR/reference_logps.npz, so a resumed stage reads the same numbers. Pairs
with a missing field, an empty or identical chosen/rejected completion (rlcot.preferences), or
longer than `data.max_tokens`, are skipped and counted (summary `skipped`, and a warning), or
stop the stage when `data.on_bad_rows` is 'error'. Batches are a pure function of
(seed, step) (rlcot.sft.batches) and the checkpoint holds the parameters, the optimizer state
and the metrics of the unfinished log window, so a resumed stage ends bit for bit where an
uninterrupted one does, metrics.jsonl included; a stop request (rlcot.preempt) ends it at the
next step boundary with a checkpoint there (rlcot.steps). `train.steps`, or `train.epochs` passes over
the pairs (each epoch drops its last partial batch).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from rlcot import dpo, preferences, run_config, sft
from rlcot.models import lora
from rlcot.models.lora import LoraConfig
from rlcot.sharding import MeshConfig
from rlcot.toyworld.corpus import WorldConfig

log = logging.getLogger(__name__)

MAKES_MODEL = True
REFERENCE_FILE = "reference_logps.npz"


@dataclasses.dataclass(frozen=True)
class DPOData:
    """dataset: 'stage:NAME' or 'jsonl:PATH'; limit: the first rows only; max_tokens: pairs
    whose prompt + completion + eos is longer are skipped (default: the model's context);
    on_bad_rows: rows with a missing field, an empty response or a tie are skipped and
    counted ('skip') or stop the stage ('error'), rlcot.preferences."""
    dataset: str = ""
    limit: int | None = None
    max_tokens: int | None = None
    on_bad_rows: str = "skip"

    def __post_init__(self):
        preferences.check_on_bad_rows(self.on_bad_rows)
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"data.limit must be >= 1 or None, got {self.limit}")


@dataclasses.dataclass(frozen=True)
class DPOTrain:
    """steps: optimizer steps of batch_size pairs; None: `epochs` passes over the pairs. Both
    halves of a batch are padded to one width (a multiple of length_multiple); sort_group > 1
    sorts groups of that many batches by length."""
    steps: int | None = None
    epochs: int = 1
    batch_size: int = 16
    length_multiple: int = 16
    sort_group: int = 1
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10

    def __post_init__(self):
        for f in ("epochs", "batch_size", "length_multiple", "sort_group", "checkpoint_every",
                  "keep_checkpoints", "log_every"):
            if getattr(self, f) < 1:
                raise ValueError(f"train.{f} must be >= 1, got {getattr(self, f)}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"train.steps must be >= 1 or None, got {self.steps}")
        if self.steps is not None and self.epochs != 1:
            raise ValueError(f"set one of train.steps ({self.steps}) and train.epochs "
                             f"({self.epochs}), not both")

    def total_steps(self, pairs: int) -> int:
        if pairs < self.batch_size:
            raise ValueError(f"{pairs} usable pairs are fewer than train.batch_size="
                             f"{self.batch_size}")
        return self.steps or self.epochs * (pairs // self.batch_size)


@dataclasses.dataclass(frozen=True)
class DPOStageConfig:
    model: run_config.ModelSection
    seed: int = 0
    mesh: MeshConfig = MeshConfig()
    world: WorldConfig = WorldConfig()
    data: DPOData = DPOData()
    loss: dpo.DPOLoss = dpo.DPOLoss()
    # TRL's DPOConfig default learning rate.
    optimizer: sft.SFTConfig = sft.SFTConfig(learning_rate=1e-6)
    train: DPOTrain = DPOTrain()
    eval: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    lora: LoraConfig = LoraConfig()  # train LoRA adapters on the frozen model (rlcot.models.lora)

    def __post_init__(self):
        total, steps = self.optimizer.total_steps, self.train.steps
        if total is not None and steps is not None and total < steps:
            raise ValueError(f"optimizer.total_steps ({total}) is shorter than train.steps "
                             f"({steps})")



# ---- the kind's interface ---------------------------------------------------------------------

def inherited(top: dict[str, Any]) -> dict[str, Any]:
    return {k: top[k] for k in ("seed", "mesh", "world") if k in top}


def resolve(values: dict[str, Any]) -> DPOStageConfig:
    cfg = run_config.build(DPOStageConfig, values, "stage")
    cfg.model.check()
    preferences.check_dataset(cfg.data.dataset)
    return cfg


def sources(cfg: DPOStageConfig) -> dict[str, str | None]:
    return {"model.source": cfg.model.source, "model.reference": cfg.model.reference,
            "data.dataset": cfg.data.dataset}


def defaults(**fields: Any) -> Any:
    """Every field at its default, except model.source: left out, the study fills in the
    previous model stage."""
    return run_config.stage_defaults("dpo", DPOStageConfig, fields)


# ---- data -------------------------------------------------------------------------------------

def load_pairs(data: DPOData, study_dir: Path | None
               ) -> tuple[list[tuple[str, str, str]], dict[str, int]]:
    """(prompt, chosen, rejected) texts of the dataset, and counts of skipped rows
    (rlcot.preferences.load_pairs: missing fields, empty responses, ties)."""
    rows, skipped = preferences.load_pairs(data.dataset, study_dir, limit=data.limit,
                                           on_bad_rows=data.on_bad_rows)
    return [(r["prompt"], r["chosen"], r["rejected"]) for r in rows], skipped


def _load_or_compute_reference(path: Path, key: str, compute: Any, write: bool = True
                               ) -> tuple[np.ndarray, np.ndarray, bool]:
    from rlcot.toyworld.cache import write_atomic
    if path.is_file():
        with np.load(path) as z:
            if str(z["key"]) != key:
                raise ValueError(f"{path} holds reference log-probs of other pairs or another "
                                 f"reference than this stage's; delete it (and checkpoints/) "
                                 f"to start the stage again")
            return z["chosen"], z["rejected"], True
    chosen, rejected = compute()
    if write:  # (several processes: all compute them together, process 0 writes the file)
        buf = io.BytesIO()
        np.savez(buf, key=np.array(key), chosen=chosen, rejected=rejected)
        write_atomic(path, buf.getvalue())
    return chosen, rejected, False


# ---- the stage --------------------------------------------------------------------------------

def _window_row(window: list[dict[str, Any]]) -> dict[str, float]:
    return {k: float(np.sum([w[k] for w in window])) if k == "pairs"
            else float(np.mean([w[k] for w in window])) for k in window[0]}


def run(cfg: DPOStageConfig, ctx: Any) -> dict[str, Any]:
    from rlcot import distributed, world_setup
    from rlcot.rl.logprobs import batch_sharding, row_shards
    from rlcot.rl.state import train_state_shardings
    from rlcot.stages.merge import vocab_fingerprint
    from rlcot.steps import StepLoop
    from rlcot.toyworld.cache import content_key
    from rlcot.workdir import read_metrics, write_json

    workdir = Path(ctx.dir)
    # Several processes (rlcot.distributed): every process reads the pairs and builds the same
    # batch order; each puts only its block of each batch's pairs into the global batch,
    # process 0 alone writes the stage's files, all take part in checkpoints and evaluation.
    primary, multi = distributed.is_primary(), distributed.multi()
    if primary:
        write_json(workdir / "config.json", dataclasses.asdict(cfg))
    mesh = cfg.mesh.make()
    t_start = time.perf_counter()
    policy = ctx.resolver.load_policy(cfg.model, mesh=mesh, seed=cfg.seed,
                                      stage_dir=workdir if primary else None)
    tok = policy.tokenizer

    # ---- Pairs and their reference log-probs ------------------------------------------------
    texts, skipped = load_pairs(cfg.data, ctx.study_dir)
    rows_read = len(texts) + sum(skipped.values())
    toks, more = dpo.tokenize_pairs(texts, tok, cfg.data.max_tokens, policy.cfg.max_position)
    skipped = {**skipped, "tie": skipped["tie"] + more["identical"],
               "too_long": more["too_long"]}
    if any(skipped.values()):
        log.warning("dpo data %s: skipped %s of %d pairs", cfg.data.dataset, skipped, rows_read)
    n_pairs = len(toks.lengths)
    try:
        steps = cfg.train.total_steps(n_pairs)
    except ValueError as e:
        raise ValueError(f"dpo data {cfg.data.dataset!r} (skipped {skipped}): {e}") from e
    shards = row_shards(mesh)
    rows = batch_sharding(mesh)
    m = cfg.train.length_multiple

    def put(b):
        """A pair batch (every process collates all of it: the padded width is the batch's
        widest) onto the mesh: pairs over the batch shards when they split evenly (each
        process gives its block, distributed.to_global), else replicated."""
        n = len(b["ref_chosen_logp_B"])
        if n % shards:
            return jax.tree.map(lambda x: distributed.replicated(x, mesh), b) if multi else b
        if not multi:
            return jax.device_put(b, rows)
        distributed.check_row_blocks(rows, n)
        block = distributed.local_block(n)
        return distributed.to_global(jax.tree.map(lambda x: x[block], b), rows)

    ref_source = cfg.model.reference or cfg.model.source

    def compute_reference():
        graphdef, params = policy.graphdef, policy.params
        if cfg.model.reference is not None and cfg.model.reference != cfg.model.source:
            ref = ctx.resolver.load(cfg.model.reference, mesh=mesh, seed=cfg.seed, overrides={
                k: v for k, v in cfg.model.overrides().items() if k in ("dtype", "param_dtype")})
            shapes = lambda t: jax.tree.map(lambda x: (x.shape, str(x.dtype)), t)  # noqa: E731
            if shapes(ref.params) != shapes(policy.params):
                raise ValueError(f"model.reference {cfg.model.reference!r} does not have the "
                                 f"policy's parameter shapes and dtypes")
            if ref.tokenizer is not None and vocab_fingerprint(ref.tokenizer) != \
                    vocab_fingerprint(tok):
                raise ValueError(f"model.reference {cfg.model.reference!r} has another "
                                 f"tokenizer than the policy {cfg.model.source!r}")
            graphdef, params = ref.graphdef, ref.params
        log.info("reference log-probs of %d pairs (%s)", n_pairs, ref_source)
        return dpo.reference_logps(graphdef, params, toks, batch_size=cfg.train.batch_size,
                                   pad_id=tok.pad_id, eos_id=tok.eos_id, length_multiple=m,
                                   put=put)

    t_ref = time.perf_counter()
    ref_key = content_key(ref_source, toks.digest(), cfg.train.batch_size, m)
    ref_c, ref_r, ref_stored = _load_or_compute_reference(workdir / REFERENCE_FILE, ref_key,
                                                          compute_reference, write=primary)
    reference_s = time.perf_counter() - t_ref

    # ---- Optimizer, resume -----------------------------------------------------------------
    opt_cfg = cfg.optimizer
    if opt_cfg.total_steps is None:
        opt_cfg = dataclasses.replace(opt_cfg, total_steps=steps)
    elif opt_cfg.total_steps < steps:
        raise ValueError(f"optimizer.total_steps ({opt_cfg.total_steps}) is shorter than the "
                         f"stage's {steps} steps")
    optimizer = sft.make_optimizer(opt_cfg)
    step_fn = dpo.make_train_step(optimizer, cfg.loss, opt_cfg.micro_batches, opt_cfg.remat,
                                  mesh=mesh)
    # Scalars (Adam's count) replicated on the mesh like the rest, so a restored state is
    # placed where the step expects it.
    base, trained = lora.start(cfg.lora, policy.params, cfg.seed,
                               workdir if primary else None, mesh)
    # LoRA: the adapters are trained; the base stays frozen.
    state = sft.OptimizerState(trained, optimizer.init(trained))
    state = jax.device_put(state, train_state_shardings(state, mesh))
    loop = StepLoop(workdir, state, name=ctx.name, steps=steps,
                    log_every=cfg.train.log_every, checkpoint_every=cfg.train.checkpoint_every,
                    keep_checkpoints=cfg.train.keep_checkpoints,
                    schedule=sft.learning_rate_schedule(opt_cfg),
                    keys=("loss", "rewards/accuracies"), primary=primary)
    start = loop.start
    order = sft.batches(toks.lengths, cfg.train.batch_size, steps, cfg.seed,
                        cfg.train.sort_group)

    # ---- The loop ---------------------------------------------------------------------------
    def step(i, params, opt_state):
        batch = put(dpo.collate_pairs(toks, order[i], pad_id=tok.pad_id, eos_id=tok.eos_id,
                                      length_multiple=m, ref=(ref_c, ref_r)))
        return step_fn(policy.graphdef, params, opt_state, batch, base, cfg.lora.scale)

    t_train = time.perf_counter()
    params, _ = loop.run(step, summarize=_window_row)
    train_s = time.perf_counter() - t_train
    distributed.sync("dpo metrics written")  # process 0's metrics.jsonl, read by every process
    rows_ = read_metrics(workdir)
    final = {k: v for k, v in (rows_[-1] if rows_ else {}).items()
             if k != "step" and not k.startswith("time/")}
    info: dict[str, Any] = {
        "steps": steps, "seed": cfg.seed, "num_params": policy.cfg.num_params(),
        "loss": dataclasses.asdict(cfg.loss), "reference": ref_source, "rows": rows_read,
        "pairs": n_pairs, "skipped": skipped, "final_train": final, "resumed_from_step": start,
        "reference_s": round(reference_s, 2), "reference_stored": ref_stored,
        "train_s": round(train_s, 2)}
    eval_sets, eval_cfg = world_setup.eval_setup(cfg.eval, cfg.world)
    if eval_sets:
        from rlcot.sampling import Sampler
        sampler = Sampler(policy.cfg, lora.policy_weights(cfg.lora, base, params),
                          tokenizer=tok, mesh=mesh)
        generate = distributed.replicated_generate(sampler.generate, mesh)
        info["eval_after"] = {k[len("eval/"):]: v for k, v in world_setup.evaluate_at(
            steps, generate, tok, eval_sets, eval_cfg, cfg.seed,
            workdir if primary else None).items()}
    return {**info, "wall_time_s": round(time.perf_counter() - t_start, 2)}
