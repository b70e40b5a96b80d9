"""The `sft` stage kind: supervised fine-tuning on prompt/completion pairs (rlcot.sft's masked
next-token loss and jitted optax step), exactly resumable, optionally cached by content key.

Data (`data.dataset`):
  'toyworld_corpus'   the toy world's pre-training corpus (config.world)
  'toyworld'          the toy world's `split` problems with their clean reference solutions
  'jsonl:PATH'        rows with "prompt" and "completion"
  'stage:NAME'        the dataset written by an earlier `generate` stage
  any registry name   rlcot.data.registry examples: the template's prompt, the "solution" field

Rows that are not JSON or not UTF-8, lack a prompt or a completion, have an empty completion,
or are longer than `data.max_tokens` are skipped and counted (one warning line, and `skipped`
in summary.json), or stop the stage when `data.on_bad_rows` is 'error'. Batches are a pure
function of (seed, step) (rlcot.sft.batches), and the checkpoint holds the parameters, the
optimizer state and the losses of the log window in progress, so a resumed stage ends bit for
bit where an uninterrupted one does; a stop request (rlcot.preempt) ends it after the current
step with a checkpoint there. With `train.cache`, the trained policy is stored under the toy
world's cache directory keyed by everything that decides it (the stage's settings, the world,
the mesh shape and the code), and a later study with the same key loads it instead of
training: the toy studies' base models are built this way once and shared.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from rlcot import run_config, sft
from rlcot.data.templates import TemplateConfig
from rlcot.models import lora
from rlcot.models.lora import LoraConfig
from rlcot.sharding import MeshConfig
from rlcot.toyworld.corpus import WorldConfig

log = logging.getLogger(__name__)

MAKES_MODEL = True
# Code whose changes change what a cached policy holds.
_CACHE_SOURCES = ("sft.py", "stages/sft.py", "rl/optim.py", "models/transformer.py",
                  "models/config.py", "models/presets.py", "toyworld/tasks.py",
                  "toyworld/solutions.py", "toyworld/corpus.py", "toyworld/tokenizer.py",
                  "tokenizer/spm.py")


@dataclasses.dataclass(frozen=True)
class SFTData:
    dataset: str = "toyworld_corpus"
    split: str = "train"
    template: TemplateConfig = TemplateConfig()
    limit: int | None = None
    max_tokens: int | None = None
    on_bad_rows: str = "skip"

    def __post_init__(self):
        if not self.dataset:
            raise ValueError("data.dataset is empty")
        if self.on_bad_rows not in ("skip", "error"):
            raise ValueError(f"data.on_bad_rows must be 'skip' or 'error', got "
                             f"{self.on_bad_rows!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"data.limit must be >= 1 or None, got {self.limit}")


@dataclasses.dataclass(frozen=True)
class SFTTrain:
    """batch_size rows per step; each batch's `short_rows` shortest rows and its other rows are
    padded separately (to multiples of length_multiple) and go through one update together;
    sort_group > 1 sorts groups of that many batches by length. pack_length: instead, pack
    examples into batch_size rows of pack_length tokens per step (rlcot.sft.pack_plan: each
    example attends only to itself), so a step takes as many examples as fit."""
    steps: int = 1000
    batch_size: int = 64
    length_multiple: int = 16
    short_rows: int = 0
    sort_group: int = 1
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 50
    cache: bool = False
    pack_length: int | None = None

    def __post_init__(self):
        for f in ("steps", "batch_size", "length_multiple", "sort_group", "checkpoint_every",
                  "keep_checkpoints", "log_every"):
            if getattr(self, f) < 1:
                raise ValueError(f"train.{f} must be >= 1, got {getattr(self, f)}")
        if not 0 <= self.short_rows < self.batch_size:
            raise ValueError(f"train.short_rows must be in [0, batch_size={self.batch_size}), "
                             f"got {self.short_rows}")
        if self.pack_length is not None and (self.pack_length < 1 or self.short_rows):
            raise ValueError(f"train.pack_length must be >= 1 and excludes short_rows, got "
                             f"pack_length={self.pack_length} short_rows={self.short_rows}")


@dataclasses.dataclass(frozen=True)
class SFTStageConfig:
    model: run_config.ModelSection
    seed: int = 0
    mesh: MeshConfig = MeshConfig()
    world: WorldConfig = WorldConfig()
    data: SFTData = SFTData()
    optimizer: sft.SFTConfig = sft.SFTConfig()
    train: SFTTrain = SFTTrain()
    eval: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    lora: LoraConfig = LoraConfig()  # train LoRA adapters on the frozen model (rlcot.models.lora)

    def __post_init__(self):
        if self.lora.enabled and self.train.cache:
            raise ValueError("lora and train.cache do not go together: the cache holds whole "
                             "models; set train.cache=False")
        total = self.optimizer.total_steps
        if total is not None and total < self.train.steps:
            raise ValueError(f"optimizer.total_steps ({total}) is shorter than train.steps "
                             f"({self.train.steps})")
        if self.train.cache and not self.model.source.startswith("preset:"):
            raise ValueError(f"train.cache needs a self-contained stage: a 'preset:' model "
                             f"source, not {self.model.source!r}")
        if self.train.cache and self.data.dataset.startswith(("stage:", "jsonl:")):
            raise ValueError(f"train.cache needs data the key can describe, not "
                             f"{self.data.dataset!r}")
        K, B, k = self.optimizer.micro_batches, self.train.batch_size, self.train.short_rows
        if K > 1 and not k and B % K:  # (short/long halves are two passes, not micro-batches)
            raise ValueError(f"train.batch_size {B} does not split into optimizer.micro_batches "
                             f"{K}: use a multiple of {K}")



# ---- the kind's interface ---------------------------------------------------------------------

def inherited(top: dict[str, Any]) -> dict[str, Any]:
    return {k: top[k] for k in ("seed", "mesh", "world") if k in top}


def resolve(values: dict[str, Any]) -> SFTStageConfig:
    cfg = run_config.build(SFTStageConfig, values, "stage")
    cfg.model.check()
    return cfg


def sources(cfg: SFTStageConfig) -> dict[str, str | None]:
    return {"model.source": cfg.model.source, "data.dataset": cfg.data.dataset}


def defaults(**fields: Any) -> Any:
    from ml_collections import config_dict

    from rlcot.study import deep_merge
    base = run_config._as_config(SFTStageConfig(model=run_config.ModelSection("preset:tiny")))
    for k in ("seed", "mesh", "world"):  # inherited from the study unless the stage sets them
        del base[k]
    del base.model["source"]  # unless given: the previous model stage (the study fills it in)
    values = deep_merge(base.to_dict(), run_config._plain(fields))
    return config_dict.ConfigDict({"kind": "sft", **values})


# ---- data -------------------------------------------------------------------------------------

def load_pairs(data: SFTData, world: WorldConfig, study_dir: Path | None
               ) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """(prompt, completion) texts of the stage's dataset, and counts of the rows skipped, by
    reason (raises on the first one when data.on_bad_rows is 'error')."""
    from rlcot.data.base import decode_example
    from rlcot.data.pipeline import read_records, row_problem
    from rlcot.data.templates import render_prompt
    name = data.dataset
    rows: list[tuple[str, str]] = []
    bad: dict[str, list[str]] = {}

    def skip(why: str, where: str) -> None:
        if data.on_bad_rows == "error":
            raise ValueError(f"sft data {name!r}: {where}: {why}, and data.on_bad_rows is "
                             f"'error'; fix the data, or set it to 'skip' to leave such rows out")
        bad.setdefault(why, []).append(where)

    if name == "toyworld_corpus":
        from rlcot.toyworld.corpus import build_corpus
        rows = [(d.prompt, d.completion) for d in build_corpus(world, data.limit)]
    elif name.startswith(("jsonl:", "stage:")):
        if name.startswith("jsonl:"):
            path = Path(name[len("jsonl:"):]).expanduser()
        else:
            path = Path(study_dir) / name[len("stage:"):] / "data.jsonl"
        for i, raw in enumerate(path.read_bytes().splitlines()):
            where = f"{path}:{i + 1}"
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                skip("not_utf8", where)
                continue
            except json.JSONDecodeError:
                skip("not_json", where)
                continue
            why = (row_problem(row, ("prompt",)) if isinstance(row, dict) else "not_an_object")
            if why is None and not isinstance(row.get("completion"), str):
                why = "missing_completion"
            if why is not None:
                skip(why, where)
                continue
            rows.append((row["prompt"], row["completion"]))
        rows = rows[:data.limit]
    else:
        from rlcot.world_setup import data_source
        src = data_source(world, name, data.split, data.limit if name == "toyworld" else None)
        for i, record in enumerate(read_records(src, data.limit)):
            why = row_problem(record, ("question",))
            if why is None:
                ex = decode_example(record)
                try:
                    rows.append((render_prompt(data.template, ex), ex.get("solution") or ""))
                except KeyError as e:
                    why = f"missing_{e.args[0] if e.args else 'field'}"
            if why is not None:
                skip(why, f"{name}/{data.split} row {i}")
    kept = []
    for p, c in rows:
        if c.strip():
            kept.append((p, c))
        else:
            skip("empty_completion", f"completion of {p[:40]!r}")
    if not kept:
        raise ValueError(f"dataset {name!r} has no rows with a completion")
    return kept, {why: len(v) for why, v in sorted(bad.items())}


def tokenize(pairs: list[tuple[str, str]], tokenizer: Any, max_tokens: int | None,
             max_position: int) -> tuple[list, list, np.ndarray, int]:
    prompts = tokenizer.encode_batch([p for p, _ in pairs])
    completions = tokenizer.encode_batch([c for _, c in pairs])
    lengths = np.array([len(p) + len(c) + 1 for p, c in zip(prompts, completions)])
    limit = min(max_tokens or max_position, max_position)
    keep = lengths <= limit
    dropped = int((~keep).sum())
    if dropped:
        idx = np.flatnonzero(keep)
        prompts = [prompts[i] for i in idx]
        completions = [completions[i] for i in idx]
        lengths = lengths[idx]
    return prompts, completions, lengths, dropped


# ---- the stage --------------------------------------------------------------------------------

def _row(window: list[dict[str, Any]]) -> dict[str, float]:
    return {"loss": float(np.mean([r["loss"] for r in window])),
            "grad_norm": float(np.mean([r["grad_norm"] for r in window])),
            "target_tokens": float(np.sum([r["target_tokens"] for r in window]))}


def _cache_key(cfg: SFTStageConfig, mesh_shape: dict[str, int]) -> str:
    from rlcot.toyworld import cache
    package = Path(__file__).parents[1]
    settings = dataclasses.asdict(dataclasses.replace(cfg, eval={}, mesh=MeshConfig()))
    return cache.content_key(settings, mesh_shape,
                             cache.source_digest([package / f for f in _CACHE_SOURCES]))


def run(cfg: SFTStageConfig, ctx: Any) -> dict[str, Any]:
    """Trains (or resumes) the stage. With train.cache, processes that would build the same
    cache entry take turns: the first trains and writes it, the others wait and then load it
    (parallel sweep points share one base model instead of each training it)."""
    if not cfg.train.cache:
        return _run(cfg, ctx)
    from rlcot.toyworld import cache
    settings = dataclasses.asdict(dataclasses.replace(cfg, eval={}, mesh=MeshConfig()))
    with cache.building(f"sft-{cache.content_key(settings)}"):
        return _run(cfg, ctx)


def _run(cfg: SFTStageConfig, ctx: Any) -> dict[str, Any]:
    from rlcot import distributed, sources, world_setup
    from rlcot.checkpoint import Checkpointer
    from rlcot.rl.logprobs import batch_sharding, row_shards
    from rlcot.sharding import TRAIN_RULES, state_shardings
    from rlcot.toyworld import cache
    from rlcot.steps import StepLoop
    from rlcot.workdir import read_metrics, write_json

    workdir = Path(ctx.dir)
    # Several processes (rlcot.distributed): every process builds the same batch order; each
    # collates only its block of each batch's rows into the global batch, process 0 alone
    # writes the stage's files, and all take part in each checkpoint and in the evaluation.
    primary, multi = distributed.is_primary(), distributed.multi()
    if multi and cfg.train.cache:
        raise ValueError(f"stage {ctx.name}: train.cache is not supported with "
                         f"{jax.process_count()} processes (the cache entry is one host's "
                         f"file); set train.cache=False or run one process")
    if primary:
        write_json(workdir / "config.json", dataclasses.asdict(cfg))
    mesh = cfg.mesh.make()
    t_start = time.perf_counter()
    policy = ctx.resolver.load_policy(cfg.model, mesh=mesh, seed=cfg.seed,
                                      stage_dir=workdir if primary else None)
    tok = policy.tokenizer
    steps = cfg.train.steps
    info: dict[str, Any] = {"steps": steps, "seed": cfg.seed,
                            "num_params": policy.cfg.num_params()}

    # ---- A cached result with the same key: no training ------------------------------------
    key = entry = None
    if cfg.train.cache:
        key = _cache_key(cfg, dict(mesh.shape))
        entry = cache.cache_dir() / f"sft-{key}"
        if (entry / "info.json").is_file():
            params = cache.load_params(entry / "params.npz", policy.params)
            params = jax.device_put(params, jax.tree.map(lambda x: x.sharding, policy.params))
            ckpt = Checkpointer(workdir, max_to_keep=1)
            ckpt.save(steps, sources.PolicyOnly(params), {"step": steps, "cached": key})
            ckpt.close()
            (workdir / "metrics.jsonl").write_text((entry / "metrics.jsonl").read_text())
            cached = json.loads((entry / "info.json").read_text())
            log.info("policy from the cache (%s): trained in %.0fs", entry, cached["train_s"])
            return {**cached, "cached": True, "cache_key": key,
                    "wall_time_s": round(time.perf_counter() - t_start, 2)}

    # ---- Data, optimizer, resume -----------------------------------------------------------
    pairs, skipped = load_pairs(cfg.data, cfg.world, ctx.study_dir)
    total = len(pairs) + sum(skipped.values())
    max_tokens = min(x for x in (cfg.data.max_tokens, cfg.train.pack_length,
                                 policy.cfg.max_position) if x)  # a row holds a whole example
    prompts, completions, lengths, too_long = tokenize(pairs, tok, max_tokens,
                                                       policy.cfg.max_position)
    if too_long:
        limit = max_tokens
        if cfg.data.on_bad_rows == "error":
            raise ValueError(f"sft data {cfg.data.dataset!r}: {too_long} rows are longer than "
                             f"{limit} tokens (data.max_tokens, the model's context), and "
                             f"data.on_bad_rows is 'error'")
        skipped["too_long"] = too_long
    if skipped:
        log.warning("sft data %s: skipped %d of %d rows: %s", cfg.data.dataset,
                    sum(skipped.values()), total, skipped)
    opt_cfg = cfg.optimizer
    if opt_cfg.total_steps is None:
        opt_cfg = dataclasses.replace(opt_cfg, total_steps=steps)
    optimizer = sft.make_optimizer(opt_cfg)
    step_fn = sft.make_train_step(optimizer, opt_cfg.micro_batches, opt_cfg.remat,
                                  mesh=mesh)
    base, trained = lora.start(cfg.lora, policy.params, cfg.seed,
                               workdir if primary else None, mesh)
    # LoRA: the adapters are trained; the base stays frozen.
    state = sft.OptimizerState(trained, optimizer.init(trained))
    # Everything onto the mesh (the optimizer's step count lands on one device otherwise), so
    # that a restored state, whose arrays keep the shardings they are restored into, fits the
    # compiled step as a fresh one does.
    state = jax.device_put(state, state_shardings(state, mesh, TRAIN_RULES))
    loop = StepLoop(workdir, state, name=ctx.name, steps=steps,
                    log_every=cfg.train.log_every, checkpoint_every=cfg.train.checkpoint_every,
                    keep_checkpoints=cfg.train.keep_checkpoints,
                    schedule=sft.learning_rate_schedule(opt_cfg), keys=("loss",),
                    primary=primary)
    start = loop.start
    packed = cfg.train.pack_length is not None
    order = (sft.pack_plan(lengths, cfg.train.batch_size, cfg.train.pack_length, steps,
                           cfg.seed) if packed else
             sft.batches(lengths, cfg.train.batch_size, steps, cfg.seed, cfg.train.sort_group))
    shards = row_shards(mesh)
    rows = batch_sharding(mesh)
    m, k = cfg.train.length_multiple, cfg.train.short_rows
    H = jax.process_count()

    def collate(idx):
        # Rows over the batch shards when they split evenly (each process collates its block,
        # distributed.to_global), else replicated on every device (the host batch itself with
        # one process; with several, every process collates all rows: a global array must be
        # made from each process's own part).
        sharded = len(idx) % shards == 0
        if multi and sharded:
            distributed.check_row_blocks(rows, len(idx))
            part = idx[distributed.local_block(len(idx))]
        else:
            part = idx
        if packed:  # idx: rows of example indices
            b = sft.collate_packed([[(prompts[j], completions[j]) for j in row] for row in part],
                                   width=cfg.train.pack_length, pad_id=tok.pad_id,
                                   eos_id=tok.eos_id)
        else:
            width = -(-int(lengths[idx].max()) // m) * m  # over all rows: the same everywhere
            b = sft.collate([(prompts[j], completions[j]) for j in part], pad_id=tok.pad_id,
                            eos_id=tok.eos_id, length=width)
        if sharded:
            return distributed.to_global(b, rows)
        return jax.tree.map(lambda x: distributed.replicated(x, mesh), b) if H > 1 else b

    # ---- The loop ---------------------------------------------------------------------------
    def step(i, params, opt_state):
        idx = order[i]
        if packed and len(idx) < cfg.train.batch_size:  # fewer rows than asked: pad with
            idx = idx + [[] for _ in range(cfg.train.batch_size - len(idx))]  # empty ones
        batch = (collate(idx[:k]), collate(idx[k:])) if k else collate(idx)
        return step_fn(policy.graphdef, params, opt_state, batch, base, cfg.lora.scale)

    t_train = time.perf_counter()
    params, _ = loop.run(step, summarize=_row)
    train_s = time.perf_counter() - t_train
    distributed.sync("sft metrics written")  # process 0's metrics.jsonl, read by every process
    rows_ = read_metrics(workdir)
    info.update({"train_s": round(train_s, 2), "examples": len(prompts), "skipped": skipped,
                 "final_loss": rows_[-1]["loss"] if rows_ else None,
                 "tokens_per_sequence_mean": float(lengths.mean()),
                 "resumed_from_step": start})

    # ---- Evaluation and the cache entry -----------------------------------------------------
    eval_sets, eval_cfg = world_setup.eval_setup(cfg.eval, cfg.world)
    if eval_sets:
        from rlcot.sampling import Sampler
        sampler = Sampler(policy.cfg, lora.policy_weights(cfg.lora, base, params),
                          tokenizer=tok, mesh=mesh)
        generate = distributed.replicated_generate(sampler.generate, mesh)
        info["eval_after"] = {k[len("eval/"):]: v for k, v in world_setup.evaluate_at(
            steps, generate, tok, eval_sets, eval_cfg, cfg.seed,
            workdir if primary else None).items()}
    if entry is not None:
        # Parameters and metrics first, info last: info.json marks a complete entry.
        cache.save_params(entry / "params.npz", params)
        cache.write_atomic(entry / "metrics.jsonl", (workdir / "metrics.jsonl").read_bytes())
        cache.write_atomic(entry / "info.json", json.dumps(info, indent=1).encode())
    return {**info, "cached": False, "cache_key": key,
            "wall_time_s": round(time.perf_counter() - t_start, 2)}
