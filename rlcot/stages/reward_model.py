"""The `reward_model` stage kind: a reward model trained on preference pairs with the
Bradley-Terry loss (rlcot.reward_model), exactly resumable and stopped by a stop request at a
step boundary with a checkpoint there (rlcot.steps); held-out pair accuracy and calibration
reported; later stages use it as a reward:

    rewards = {"rm": {"reward": "reward_model", "model": "stage:rm", "normalize": "reference"}}

Model: the policy `model.source` (usually the SFT stage) with a zero-initialised scalar head,
so every response starts at reward 0. Data (`data.dataset`): 'stage:NAME' (a generate stage
with select='labelled_pairs' or 'pairs') or 'jsonl:PATH', rows of "prompt", "chosen",
"rejected"; rows with a missing field, an empty response or a tie are skipped and counted, or
stop the stage (`data.on_bad_rows`: rlcot.preferences). A seeded split (fixed, whatever the
study's seed) holds out `data.eval_fraction` of the pairs: the held-out loss, accuracy
(chosen scored strictly higher) and expected calibration error are logged every
`train.eval_every` steps and at the end; where rows carry the true scores of their two
responses ("chosen_reference" / "rejected_reference", written by generate's labelled pairs),
the held-out accuracy against that true preference too (pairs whose true scores tie are left
out of it).

Output: checkpoints/ (the model under `.params`), model.json (its config and tokenizer) and
reward_model.json: the mean and std of its scores on the training pairs' responses (the
'reference' normalisation of the reward) and its held-out metrics. The stage makes no policy:
no later stage loads it as `model.source`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from rlcot import dpo, preferences, reward_model, run_config, sft
from rlcot.sharding import MeshConfig
from rlcot.toyworld.corpus import WorldConfig

log = logging.getLogger(__name__)

MAKES_MODEL = False
CARD = "reward_model.json"
SPLIT_SEED = 20231


@dataclasses.dataclass(frozen=True)
class RMData:
    """dataset: 'stage:NAME' or 'jsonl:PATH'; limit: the first rows only; max_tokens: longer
    pairs are skipped (default: the model's context); eval_fraction: share of usable pairs
    held out (at least 1 when > 0)."""
    dataset: str = ""
    limit: int | None = None
    max_tokens: int | None = None
    eval_fraction: float = 0.1
    on_bad_rows: str = "skip"

    def __post_init__(self):
        preferences.check_on_bad_rows(self.on_bad_rows)
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"data.eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"data.limit must be >= 1 or None, got {self.limit}")


@dataclasses.dataclass(frozen=True)
class RMTrain:
    """steps of batch_size pairs (None: `epochs` passes over the training pairs)."""
    steps: int | None = None
    epochs: int = 1
    batch_size: int = 32
    length_multiple: int = 16
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    eval_every: int = 50
    calibration_bins: int = 10

    def __post_init__(self):
        for f in ("epochs", "batch_size", "length_multiple", "checkpoint_every",
                  "keep_checkpoints", "log_every", "eval_every", "calibration_bins"):
            if getattr(self, f) < 1:
                raise ValueError(f"train.{f} must be >= 1, got {getattr(self, f)}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"train.steps must be >= 1 or None, got {self.steps}")
        if self.steps is not None and self.epochs != 1:
            raise ValueError(f"set one of train.steps ({self.steps}) and train.epochs "
                             f"({self.epochs}), not both")


@dataclasses.dataclass(frozen=True)
class RMStageConfig:
    model: run_config.ModelSection
    seed: int = 0
    mesh: MeshConfig = MeshConfig()
    world: WorldConfig = WorldConfig()
    data: RMData = RMData()
    # InstructGPT's reward models: one epoch at a small learning rate.
    optimizer: sft.SFTConfig = sft.SFTConfig(learning_rate=1e-5)
    train: RMTrain = RMTrain()



def inherited(top: dict[str, Any]) -> dict[str, Any]:
    return {k: top[k] for k in ("seed", "mesh", "world") if k in top}


def resolve(values: dict[str, Any]) -> RMStageConfig:
    cfg = run_config.build(RMStageConfig, values, "stage")
    cfg.model.check()
    preferences.check_dataset(cfg.data.dataset)
    return cfg


def sources(cfg: RMStageConfig) -> dict[str, str | None]:
    return {"model.source": cfg.model.source, "data.dataset": cfg.data.dataset}


def defaults(**fields: Any) -> Any:
    """Every field at its default, except model.source: left out, the study fills in the
    previous model stage."""
    return run_config.stage_defaults("reward_model", RMStageConfig, fields)


# ---- loading a trained reward model -----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LoadedRewardModel:
    cfg: Any
    graphdef: Any
    params: Any
    tokenizer: Any
    card: dict[str, Any]


def load(stage_dir: Path, resolver: Any, mesh: Any = None) -> LoadedRewardModel:
    """The reward model a finished reward_model stage wrote, in the training shardings."""
    from flax import nnx

    from rlcot import sources as src
    from rlcot.rl.value import ValueModel
    stage_dir = Path(stage_dir)
    if not (stage_dir / CARD).is_file():
        raise FileNotFoundError(f"{stage_dir} holds no reward model (no {CARD}): name a "
                                f"finished reward_model stage")
    card = src.read_model_card(stage_dir)
    cfg = src.config_from_dict(card["config"])
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: ValueModel(cfg, nnx.Rngs(0))))
    params, _ = src.restore_params(stage_dir, src.placed_abstract(abstract, mesh))
    return LoadedRewardModel(cfg, graphdef, params, src.card_tokenizer(stage_dir, resolver),
                             json.loads((stage_dir / CARD).read_text()))


# ---- the stage --------------------------------------------------------------------------------

def split(n: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices) of n pairs: a fixed seeded permutation."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    k = 0 if fraction == 0 else max(1, int(round(fraction * n)))
    return np.sort(perm[k:]), np.sort(perm[:k])


def _batches(toks: dpo.PairTokens, idx: np.ndarray, size: int, *, pad_id: int, eos_id: int,
             m: int) -> list[dict[str, Any]]:
    """Fixed-size batches over `idx` in order; the last one filled with weight-0 repeats."""
    out = []
    for s in range(0, len(idx), size):
        part = idx[s:s + size]
        full = np.concatenate([part, np.full(size - len(part), part[0])])
        b = dpo.collate_pairs(toks, full, pad_id=pad_id, eos_id=eos_id, length_multiple=m)
        b["weight_B"] = (np.arange(size) < len(part)).astype(np.float32)
        out.append(b)
    return out


def heldout_metrics(margins: np.ndarray, reference: np.ndarray | None, bins: int
                    ) -> dict[str, float]:
    """Held-out loss, accuracy, calibration (and accuracy against the true preference, where
    `reference` gives the true score difference chosen - rejected per pair; NaN: unknown)."""
    d = np.asarray(margins, np.float64)
    out = {"eval/loss": float(np.mean(np.logaddexp(0.0, -d))),
           "eval/accuracy": float(np.mean(d > 0)), "eval/margin": float(np.mean(d)),
           "eval/ece": reward_model.calibration(d, bins)["ece"]}
    if reference is not None:
        known = np.isfinite(reference) & (reference != 0)
        if known.any():
            out["eval/true_accuracy"] = float(np.mean((d[known] > 0) == (reference[known] > 0)))
    return out


def _reference_diffs(rows: list[dict[str, Any]]) -> np.ndarray | None:
    if not any("chosen_reference" in r for r in rows):
        return None
    return np.array([float(r["chosen_reference"]) - float(r["rejected_reference"])
                     if "chosen_reference" in r and "rejected_reference" in r else np.nan
                     for r in rows])


def run(cfg: RMStageConfig, ctx: Any) -> dict[str, Any]:
    from rlcot.rl.logprobs import batch_sharding, row_shards
    from rlcot.rl.state import train_state_shardings
    from rlcot.rl.value import init_value_params
    from rlcot.sources import write_model_card
    from rlcot.steps import StepLoop
    from rlcot.workdir import read_metrics, write_json

    workdir = Path(ctx.dir)
    write_json(workdir / "config.json", dataclasses.asdict(cfg))
    mesh = cfg.mesh.make()
    t_start = time.perf_counter()
    policy = ctx.resolver.load(cfg.model.source, mesh=mesh, tokenizer=cfg.model.tokenizer,
                               seed=cfg.seed, overrides=cfg.model.overrides())
    tok = policy.tokenizer
    if tok is None:
        raise ValueError(f"model {cfg.model.source!r} has no tokenizer: set model.tokenizer")

    # ---- Pairs: usable rows, tokens, the held-out split -----------------------------------
    rows, skipped = preferences.load_pairs(cfg.data.dataset, ctx.study_dir,
                                           limit=cfg.data.limit, on_bad_rows=cfg.data.on_bad_rows)
    n_read = len(rows) + sum(skipped.values())
    texts = [(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
    toks, more = dpo.tokenize_pairs(texts, tok, cfg.data.max_tokens, policy.cfg.max_position)
    kept_rows = [rows[i] for i in toks.index]
    skipped = {**skipped, "tie": skipped["tie"] + more["identical"],
               "too_long": more["too_long"]}
    if any(skipped.values()):
        log.warning("reward model data %s: skipped %s of %d rows", cfg.data.dataset, skipped,
                    n_read)
    train_idx, eval_idx = split(len(toks.lengths), cfg.data.eval_fraction)
    B = cfg.train.batch_size
    if len(train_idx) < B:
        raise ValueError(f"reward model data {cfg.data.dataset!r}: {len(train_idx)} training "
                         f"pairs (skipped {skipped}) are fewer than train.batch_size={B}")
    steps = cfg.train.steps or cfg.train.epochs * (len(train_idx) // B)
    m = cfg.train.length_multiple
    shards = row_shards(mesh)
    rows_sh = batch_sharding(mesh)

    def put(b):
        return jax.device_put(b, rows_sh) if B % shards == 0 else b

    eval_batches = _batches(toks, eval_idx, B, pad_id=tok.pad_id, eos_id=tok.eos_id, m=m) \
        if len(eval_idx) else []
    ref_diff = _reference_diffs([kept_rows[i] for i in eval_idx]) if len(eval_idx) else None

    # ---- Model, optimizer, resume ------------------------------------------------------------
    graphdef, params = init_value_params(policy.cfg, cfg.seed, mesh=mesh,
                                         body_params=policy.params)
    write_model_card(workdir, policy.cfg, tok, ctx.resolver.tokenizer_ref(
        cfg.model.source, cfg.model.tokenizer), cfg.model.source)
    opt_cfg = cfg.optimizer
    if opt_cfg.total_steps is None:
        opt_cfg = dataclasses.replace(opt_cfg, total_steps=steps)
    elif opt_cfg.total_steps < steps:
        raise ValueError(f"optimizer.total_steps ({opt_cfg.total_steps}) is shorter than the "
                         f"stage's {steps} steps")
    optimizer = sft.make_optimizer(opt_cfg)
    step_fn = reward_model.make_train_step(optimizer, opt_cfg.micro_batches, opt_cfg.remat,
                                           mesh=mesh)
    state = sft.OptimizerState(params, optimizer.init(params))
    state = jax.device_put(state, train_state_shardings(state, mesh))
    loop = StepLoop(workdir, state, name=ctx.name, steps=steps,
                    log_every=cfg.train.log_every, checkpoint_every=cfg.train.checkpoint_every,
                    keep_checkpoints=cfg.train.keep_checkpoints,
                    schedule=sft.learning_rate_schedule(opt_cfg), keys=("loss", "accuracy"))
    start = loop.start
    lengths = toks.lengths[train_idx]
    order = [train_idx[b] for b in sft.batches(lengths, B, steps, cfg.seed, 1)]

    def evaluate(params) -> dict[str, float]:
        if not eval_batches:
            return {}
        c, r = reward_model.pair_margins(graphdef, params, eval_batches, put)
        return heldout_metrics(c - r, ref_diff, cfg.train.calibration_bins)

    if start == 0 and eval_batches:
        loop.writer.write(0, evaluate(loop.state.params))

    def step(i, params, opt_state):
        idx = order[i]
        batch = dpo.collate_pairs(toks, idx, pad_id=tok.pad_id, eos_id=tok.eos_id,
                                  length_multiple=m)
        batch["weight_B"] = np.ones(len(idx), np.float32)
        return step_fn(graphdef, params, opt_state, put(batch))

    def heldout(done: int, params) -> dict[str, float]:
        return evaluate(params) if done % cfg.train.eval_every == 0 or done == steps else {}

    t_train = time.perf_counter()
    params, _ = loop.run(step, extra=heldout)
    train_s = time.perf_counter() - t_train

    # ---- The card: score statistics on the training responses, held-out metrics ------------
    train_batches = _batches(toks, train_idx, B, pad_id=tok.pad_id, eos_id=tok.eos_id, m=m)
    c, r = reward_model.pair_margins(graphdef, params, train_batches, put)
    scores = np.concatenate([c, r])
    final_eval, calib = {}, {"ece": None, "bins": []}
    if eval_batches:
        ce, re_ = reward_model.pair_margins(graphdef, params, eval_batches, put)
        final_eval = heldout_metrics(ce - re_, ref_diff, cfg.train.calibration_bins)
        calib = reward_model.calibration(ce - re_, cfg.train.calibration_bins)
    card = {"score_mean": float(scores.mean()), "score_std": float(scores.std()),
            "train_accuracy": float(np.mean(c > r)), "heldout": final_eval,
            "calibration": calib, "source": cfg.model.source}
    write_json(workdir / CARD, card)
    rows_ = read_metrics(workdir)
    final = {k: v for k, v in (rows_[-1] if rows_ else {}).items()
             if k != "step" and not k.startswith("time/")}
    data_summary = {}
    if cfg.data.dataset.startswith("stage:"):  # e.g. the labels' agreement with the truth
        path = Path(ctx.study_dir) / cfg.data.dataset[len("stage:"):] / "summary.json"
        if path.is_file():
            data_summary = {k: v for k, v in json.loads(path.read_text()).items()
                            if k in ("agreement", "agreement_pairs", "rows", "samples",
                                     "skipped")}
    return {"data_summary": data_summary, "steps": steps, "seed": cfg.seed,
            "num_params": policy.cfg.num_params() + policy.cfg.d_model + 1, "rows": n_read,
            "pairs": len(toks.lengths),
            "train_pairs": int(len(train_idx)), "heldout_pairs": int(len(eval_idx)),
            "skipped": skipped, "final_train": final, "resumed_from_step": start,
            "score_mean": card["score_mean"], "score_std": card["score_std"],
            "eval_after": {k[len("eval/"):]: v for k, v in final_eval.items()},
            "train_s": round(train_s, 2), "wall_time_s": round(time.perf_counter() - t_start, 2)}
