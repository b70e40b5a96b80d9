"""Model sources a stage names, and the output every stage ends with.

Sources: 'preset:NAME' (random init, seeded), 'hf:DIR' / 'hf:ORG/NAME', 'gguf:PATH',
'gguf:smollm2', 'stage:NAME' (an earlier stage of the same study) and 'workdir:PATH' (any
finished stage directory, or a study directory: its last stage). A stage's output is its
directory's `model.json` (the model config and where its tokenizer is) plus the policy under
`.params` in the latest orbax checkpoint of `checkpoints/`; `summary.json` with
`"finished": true` marks it complete.

Tokenizers: a path, or 'toyworld' (the world's sentencepiece model, trained on its corpus and
cached by content key).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

import jax

MODEL_FILE = "model.json"
SUMMARY_FILE = "summary.json"
TOY_TOKENIZER = "toyworld"
KINDS = ("preset", "hf", "gguf", "stage", "workdir")


def split_source(source: str) -> tuple[str, str]:
    """('kind', 'rest') of a source string; a bare path is 'hf' (or 'gguf' for .gguf)."""
    if not isinstance(source, str) or not source:
        raise ValueError(f"a model source must be a non-empty string, got {source!r}")
    kind, sep, rest = source.partition(":")
    if not sep or kind not in KINDS:
        return ("gguf" if source.endswith(".gguf") else "hf"), source
    if not rest:
        raise ValueError(f"model source {source!r} names nothing after '{kind}:'")
    return kind, rest


# ---- model config <-> JSON ----------------------------------------------------------------------

def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_dict(d: Mapping[str, Any]) -> Any:
    from rlcot.models.config import ModelConfig, RopeScaling
    d = dict(d)
    if d.get("rope_scaling") is not None:
        d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
    if d.get("layer_types") is not None:
        d["layer_types"] = tuple(d["layer_types"])
    return ModelConfig(**d)


# ---- stage outputs -------------------------------------------------------------------------------

def is_finished(stage_dir: Path) -> bool:
    path = Path(stage_dir) / SUMMARY_FILE
    if not path.is_file():
        return False
    try:
        return bool(json.loads(path.read_text()).get("finished"))
    except json.JSONDecodeError:
        return False


def write_model_card(stage_dir: Path, cfg: Any, tokenizer: Any, tokenizer_ref: str | None,
                     source: str) -> None:
    """model.json of a stage: its model config and a tokenizer later stages can load. A
    sentencepiece tokenizer is copied into the stage directory (toy tokenizers live only in a
    cache); other tokenizers are referred to by their path."""
    from rlcot.tokenizer.spm import SentencePieceTokenizer
    from rlcot.workdir import write_json
    stage_dir = Path(stage_dir)
    tok: dict[str, Any] | None = None
    if isinstance(tokenizer, SentencePieceTokenizer):
        tokenizer.save(stage_dir / "tokenizer.model")
        tok = {"file": "tokenizer.model", "family": tokenizer.family}
    elif tokenizer_ref is not None:
        tok = {"path": tokenizer_ref}
    write_json(stage_dir / MODEL_FILE, {"config": config_to_dict(cfg), "tokenizer": tok,
                                        "source": source})


def read_model_card(stage_dir: Path) -> dict[str, Any]:
    path = Path(stage_dir) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{stage_dir} is not a stage output (no {MODEL_FILE})")
    return json.loads(path.read_text())


def card_tokenizer_ref(stage_dir: Path) -> str | None:
    tok = read_model_card(stage_dir)["tokenizer"]
    if tok is None:
        return None
    return str(Path(stage_dir) / tok["file"]) if "file" in tok else tok["path"]


def card_tokenizer(stage_dir: Path, resolver: "Resolver") -> Any:
    """The tokenizer a stage's model.json names (None: the model has none)."""
    tok = read_model_card(stage_dir)["tokenizer"]
    if tok is None:
        return None
    if "file" in tok:
        from rlcot.tokenizer.spm import SentencePieceTokenizer
        return SentencePieceTokenizer.from_file(Path(stage_dir) / tok["file"],
                                                family=tok.get("family"))
    return resolver.tokenizer(tok["path"])


def study_stage_dir(path: Path, stage: str | None = None) -> Path:
    """The directory of `stage` in a study directory (default: its last stage), or `path`
    itself when it is a stage directory."""
    path = Path(path)
    if stage is None and (path / MODEL_FILE).is_file():
        return path
    summary = path / SUMMARY_FILE
    order = json.loads(summary.read_text()).get("stage_order") if summary.is_file() else None
    if not order:
        raise FileNotFoundError(f"{path} is neither a stage directory nor a study directory")
    name = stage or order[-1]
    if name not in order:
        raise KeyError(f"{path} has no stage {name!r}; its stages are {list(order)}")
    return path / name


def restore_params(stage_dir: Path, params_like: Any) -> tuple[Any, int]:
    """(policy parameters of the stage's latest checkpoint, shaped and placed as
    params_like, its step)."""
    from rlcot.checkpoint import Checkpointer
    ckpt = Checkpointer(stage_dir)
    try:
        restored = ckpt.restore(params_like, prefix=".params")
    finally:
        ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"{stage_dir} has no checkpoint to load a policy from")
    step, params, _ = restored
    return params, step


def placed_abstract(abstract: Any, mesh: jax.sharding.Mesh | None) -> Any:
    """An abstract nnx state whose leaves carry their training shardings on `mesh` (what a
    restore places the arrays as); unchanged without a mesh."""
    if mesh is None:
        return abstract
    from flax import nnx

    from rlcot.sharding import TRAIN_RULES, state_shardings
    shardings = state_shardings(abstract, mesh, TRAIN_RULES)
    return jax.tree.map(
        lambda v, s: v.replace(jax.ShapeDtypeStruct(v.get_value().shape, v.get_value().dtype,
                                                    sharding=s)),
        abstract, shardings, is_leaf=lambda x: isinstance(x, nnx.Variable))


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class PolicyOnly:
    """A checkpoint that holds only a policy (same `.params` path as the train states)."""
    params: Any


# ---- loading ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Resolver:
    """Turns `stage:` and `workdir:` sources into directories, and builds toy tokenizers."""
    study_dir: Path | None = None
    world: Any = None  # rlcot.toyworld.corpus.WorldConfig, for the 'toyworld' tokenizer

    def directory(self, source: str) -> Path | None:
        kind, rest = split_source(source)
        if kind == "stage":
            if self.study_dir is None:
                raise ValueError(f"model source {source!r} needs a study workdir")
            path = Path(self.study_dir) / rest
        elif kind == "workdir":
            path = study_stage_dir(Path(rest).expanduser())
        else:
            return None
        if not is_finished(path):
            raise FileNotFoundError(f"model source {source!r}: {path} is not a finished stage "
                                    f"(run it first)")
        return path

    def tokenizer(self, ref: str | None) -> Any:
        if ref is None:
            return None
        if ref == TOY_TOKENIZER:
            if self.world is None:
                raise ValueError("tokenizer 'toyworld' needs config.world")
            from rlcot.toyworld.tokenizer import world_tokenizer
            return world_tokenizer(self.world)
        from rlcot.tokenizer import load_tokenizer
        return load_tokenizer(ref)

    def tokenizer_ref(self, source: str, tokenizer: str | None = None) -> str | None:
        """Where the tokenizer of a source comes from (None: it has none); cheap, no loading."""
        if tokenizer is not None:
            return tokenizer
        kind, rest = split_source(source)
        if kind in ("stage", "workdir"):
            return card_tokenizer_ref(self.directory(source))
        if kind == "hf":
            from rlcot.models.load import hf_model_dir
            return str(hf_model_dir(rest))
        if kind == "gguf":
            if rest == "smollm2":
                from rlcot.tokenizer import gguf_path_smollm2
                path = gguf_path_smollm2()
                return None if path is None else str(path)
            return rest
        return None

    def load_policy(self, model: Any, *, mesh: jax.sharding.Mesh | None = None, seed: int = 0,
                    stage_dir: Path | None = None) -> Any:
        """A stage's model section (source, tokenizer, overrides) loaded with its tokenizer
        (an error without one); with stage_dir, the stage's model.json is written too, so a
        model-producing stage is loadable as soon as it has a checkpoint."""
        loaded = self.load(model.source, mesh=mesh, tokenizer=model.tokenizer, seed=seed,
                           overrides=model.overrides())
        if loaded.tokenizer is None:
            raise ValueError(f"model {model.source!r} has no tokenizer: set model.tokenizer")
        if stage_dir is not None:
            write_model_card(stage_dir, loaded.cfg, loaded.tokenizer,
                             self.tokenizer_ref(model.source, model.tokenizer), model.source)
        return loaded

    def load(self, source: str, *, mesh: jax.sharding.Mesh | None = None,
             tokenizer: str | None = None, seed: int = 0,
             overrides: Mapping[str, Any] | None = None) -> Any:
        """A LoadedModel in the training shardings (rlcot.models.load.LoadedModel)."""
        from rlcot.models.load import LoadedModel, load_model
        overrides = dict(overrides or {})
        kind, rest = split_source(source)
        tok = self.tokenizer(tokenizer)
        if kind not in ("stage", "workdir"):
            if kind == "preset" and tok is not None:
                overrides.setdefault("vocab_size", tok.vocab_size)
            model = load_model(source, mesh=mesh, seed=seed,
                               tokenizer=None if tok is not None or tokenizer is None
                               else tokenizer, **overrides)
            return dataclasses.replace(model, tokenizer=tok) if tok is not None else model
        from rlcot.models.transformer import abstract_model
        stage_dir = self.directory(source)
        card = read_model_card(stage_dir)
        dtypes = {k: v for k, v in overrides.items() if k in ("dtype", "param_dtype")}
        other = sorted(set(overrides) - set(dtypes))
        if other:
            raise ValueError(f"model source {source!r} fixes the architecture; only dtype and "
                             f"param_dtype can be overridden, not {other}")
        if "lora" in card:  # LoRA adapters: the base loaded by its source, the adapters merged
            from rlcot.models.lora import load_adapted
            return dataclasses.replace(
                load_adapted(self, stage_dir, card, mesh=mesh, dtypes=dtypes),
                tokenizer=tok if tok is not None else card_tokenizer(stage_dir, self))
        cfg = config_from_dict(card["config"])
        graphdef, abstract = abstract_model(cfg)
        params, _ = restore_params(stage_dir, placed_abstract(abstract, mesh))
        if dtypes:
            cfg = cfg.replace(**dtypes)
            if "param_dtype" in dtypes:
                params = jax.tree.map(lambda x: x.astype(cfg.weight_dtype), params)
        if tok is None:
            tok = card_tokenizer(stage_dir, self)
        if tok is not None and tok.vocab_size > cfg.vocab_size:
            raise ValueError(f"tokenizer has {tok.vocab_size} ids but the model's vocabulary "
                             f"is {cfg.vocab_size}")
        return LoadedModel(cfg, graphdef, params, tok)
