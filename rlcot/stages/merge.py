"""The `merge` stage kind: a weighted average of two or more policies' parameters (model
merging, e.g. Kimi k1.5's long2short merge of a long-CoT and a short-CoT model), written as a
policy later stages load.

    stages.defaults("merge", models=("stage:long", "stage:short"), weights=(0.5, 0.5))

`models` are model sources (rlcot.sources); `weights` (default: equal) must sum to 1 and are
not normalised, so a typo fails instead of silently rescaling the model; a weight may be
negative (extrapolation, as in task arithmetic). Every parameter is sum_i w_i * p_i, computed
in float64 on the host shard by shard and rounded once to the first model's dtype. The models
must share the architecture (their model.json configs, compared before any weight is loaded
where the source has one) and the tokenizer (same pieces and special ids); the output carries
the first model's config and tokenizer. The field is named `models`, not `sources`: the study
checks a source field as a model source when its name starts with 'model'.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from rlcot import run_config
from rlcot.sharding import MeshConfig
from rlcot.toyworld.corpus import WorldConfig

MAKES_MODEL = True
# Configs that differ only in these still merge (the first model's are kept).
_FREE_FIELDS = ("name", "dtype", "param_dtype")


@dataclasses.dataclass(frozen=True)
class MergeStageConfig:
    models: tuple[str, ...] = ()
    weights: tuple[float, ...] | None = None
    seed: int = 0
    mesh: MeshConfig = MeshConfig()
    world: WorldConfig = WorldConfig()

    def __post_init__(self):
        if isinstance(self.models, str) or len(self.models) < 2:
            raise ValueError(f"models must list two or more model sources, got {self.models!r}")
        for m in self.models:
            if not isinstance(m, str) or not m:
                raise ValueError(f"models holds {m!r}, not a model source")
        if self.weights is not None:
            if len(self.weights) != len(self.models):
                raise ValueError(f"{len(self.weights)} weights {tuple(self.weights)} for "
                                 f"{len(self.models)} models")
            if not all(math.isfinite(w) for w in self.weights):
                raise ValueError(f"weights must be finite, got {tuple(self.weights)}")
            if abs(math.fsum(self.weights) - 1.0) > 1e-6:
                raise ValueError(f"weights {tuple(self.weights)} sum to "
                                 f"{math.fsum(self.weights)!r}, not 1 (they are not normalised)")

    @property
    def model(self) -> run_config.ModelSection:
        """The model the output inherits its tokenizer from (the study's tokenizer check
        follows it, as for the stages that have a model section)."""
        return run_config.ModelSection(self.models[0])

    def merge_weights(self) -> tuple[float, ...]:
        n = len(self.models)
        return tuple(self.weights) if self.weights is not None else (1.0 / n,) * n


# ---- the kind's interface ---------------------------------------------------------------------

def inherited(top: dict[str, Any]) -> dict[str, Any]:
    return {k: top[k] for k in ("seed", "mesh", "world") if k in top}


def resolve(values: dict[str, Any]) -> MergeStageConfig:
    return run_config.build(MergeStageConfig, values, "stage")


def sources(cfg: MergeStageConfig) -> dict[str, str | None]:
    return {f"models[{i}]": m for i, m in enumerate(cfg.models)}


def defaults(**fields: Any) -> Any:
    from ml_collections import config_dict
    return config_dict.ConfigDict({"kind": "merge", **fields})


# ---- checks -----------------------------------------------------------------------------------

def architecture(resolver: Any, source: str) -> Any:
    """The ModelConfig of a source without loading its weights (a stage output's model.json,
    or a preset), or None when only loading tells (hf, gguf)."""
    from rlcot import sources as src_lib
    kind, rest = src_lib.split_source(source)
    if kind in ("stage", "workdir"):
        card = src_lib.read_model_card(resolver.directory(source))
        return src_lib.config_from_dict(card["config"])
    if kind == "preset":
        from rlcot.models.presets import get_config
        return get_config(rest)
    return None


def param_shapes(params: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    return {jax.tree_util.keystr(p).replace(".value", ""): (tuple(x.shape), str(x.dtype))
            for p, x in leaves}


def check_same_shapes(models: Sequence[str], shapes: Sequence[dict], configs: Sequence[Any]
                      ) -> None:
    """Fails naming the parameters whose shapes differ (and the config fields behind them),
    or the architecture fields that differ between otherwise equal shapes."""
    from rlcot.sources import config_to_dict
    base, base_cfg = shapes[0], configs[0]
    for i in range(1, len(models)):
        fields = []
        if base_cfg is not None and configs[i] is not None:
            a, b = config_to_dict(base_cfg), config_to_dict(configs[i])
            fields = [f"{k}: {a[k]!r} vs {b.get(k)!r}" for k in sorted(a)
                      if k not in _FREE_FIELDS and a[k] != b.get(k)]
        other = shapes[i]
        bad = [f"{k} {base[k][0] if k in base else 'missing'} vs "
               f"{other[k][0] if k in other else 'missing'}"
               for k in sorted(set(base) | set(other))
               if k not in base or k not in other or base[k][0] != other[k][0]]
        what = f"models[0] {models[0]!r} and models[{i}] {models[i]!r}"
        if bad:
            more = f" (and {len(bad) - 6} more)" if len(bad) > 6 else ""
            why = f"; their configs differ in {', '.join(fields)}" if fields else ""
            raise ValueError(f"merge: {what} have different parameter shapes: "
                             f"{'; '.join(bad[:6])}{more}{why}")
        if fields:
            raise ValueError(f"merge: {what} have the same shapes but different "
                             f"architectures: {', '.join(fields)}")


def vocab_fingerprint(tok: Any) -> str | None:
    """A digest of a tokenizer's pieces and special ids (None: no tokenizer)."""
    if tok is None:
        return None
    h = hashlib.sha256(repr((tok.vocab_size, tok.num_pieces, tok.bos_id, tok.eos_id,
                             tok.pad_id, tuple(tok.stop_ids))).encode())
    for i in range(tok.num_pieces):
        h.update(tok.id_to_piece(i).encode("utf-8", "surrogatepass") + b"\x00")
    return h.hexdigest()[:16]


# ---- the merge --------------------------------------------------------------------------------

def weighted_sum(trees: Sequence[Any], weights: Sequence[float]) -> Any:
    """sum_i weights[i] * trees[i], leaf by leaf: each distinct shard summed in float64 on the
    host, rounded once to the first tree's dtype and placed in its sharding."""

    def leaf(*xs):
        x0 = xs[0]
        if not isinstance(x0, jax.Array):
            acc = sum(w * np.asarray(x, np.float64) for w, x in zip(weights, xs))
            return np.asarray(acc, dtype=np.asarray(x0).dtype)
        by_device = [{s.device: s for s in x.addressable_shards} for x in xs]
        done: dict[str, np.ndarray] = {}
        pieces = []
        for s0 in x0.addressable_shards:
            key = repr(s0.index)
            if key not in done:
                acc = np.zeros(s0.data.shape, np.float64)
                for w, shards in zip(weights, by_device):
                    acc += w * np.asarray(shards[s0.device].data, np.float64)
                done[key] = acc.astype(x0.dtype)
            pieces.append(jax.device_put(done[key], s0.device))
        return jax.make_array_from_single_device_arrays(x0.shape, x0.sharding, pieces)

    return jax.tree.map(leaf, *trees)


def run(cfg: MergeStageConfig, ctx: Any) -> dict[str, Any]:
    from rlcot import sources as src_lib
    from rlcot.checkpoint import Checkpointer
    from rlcot.models.transformer import abstract_model
    from rlcot.workdir import write_json

    workdir = Path(ctx.dir)
    write_json(workdir / "config.json", dataclasses.asdict(cfg))
    t0 = time.perf_counter()
    weights = cfg.merge_weights()
    resolver = ctx.resolver

    # Architectures and tokenizers first: nothing is loaded for a merge that cannot work.
    configs = [architecture(resolver, m) for m in cfg.models]
    known = [i for i, c in enumerate(configs) if c is not None]
    if len(known) > 1:
        check_same_shapes([cfg.models[i] for i in known],
                          [param_shapes(abstract_model(configs[i])[1]) for i in known],
                          [configs[i] for i in known])
    refs = [resolver.tokenizer_ref(m) for m in cfg.models]
    prints = [vocab_fingerprint(resolver.tokenizer(r)) for r in refs]
    for i in range(1, len(cfg.models)):
        if prints[i] != prints[0]:
            raise ValueError(f"merge: models[{i}] {cfg.models[i]!r} has another tokenizer "
                             f"({refs[i]!r}) than models[0] {cfg.models[0]!r} ({refs[0]!r}): "
                             f"merged policies must share their vocabulary")

    mesh = cfg.mesh.make()
    loaded = []
    for m in cfg.models:
        loaded.append(resolver.load(m, mesh=mesh, seed=cfg.seed))
        if len(loaded) > 1:  # sources without a config to compare beforehand
            check_same_shapes([cfg.models[0], m], [param_shapes(x.params) for x in
                                                   (loaded[0], loaded[-1])],
                              [loaded[0].cfg, loaded[-1].cfg])
    first = loaded[0]
    src_lib.write_model_card(workdir, first.cfg, first.tokenizer, refs[0], cfg.models[0])
    ckpt = Checkpointer(workdir, max_to_keep=1)
    if ckpt.latest_step() is None:  # else an interrupted run already wrote the same merge
        merged = weighted_sum([x.params for x in loaded], weights)
        ckpt.save(0, src_lib.PolicyOnly(merged), {"step": 0, "models": list(cfg.models),
                                                  "weights": list(weights)})
    ckpt.close()
    return {"seed": cfg.seed, "models": list(cfg.models), "weights": list(weights),
            "num_params": first.cfg.num_params(),
            "wall_time_s": round(time.perf_counter() - t0, 2)}
