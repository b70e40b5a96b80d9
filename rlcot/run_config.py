"""An experiment's ConfigDict, resolved once at the entry point into frozen, validated sections.

Library functions never see the ConfigDict: the loop passes each of them its own section.
Every field of every section can be set from an experiment file or `--config.KEY=VALUE`;
unknown keys are errors naming the section and the known keys.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping

from rlcot.data.templates import TemplateConfig
from rlcot.rl.advantages import AdvantageConfig
from rlcot.rl.state import UpdateConfig
from rlcot.sharding import MeshConfig
from rlcot.toyworld.corpus import WorldConfig


def _plain(x: Any) -> Any:
    """ConfigDict / FieldReference / lists -> plain dicts, values and tuples."""
    if hasattr(x, "to_dict"):
        x = x.to_dict()
    if hasattr(x, "get") and hasattr(x, "keys") and not isinstance(x, Mapping):
        x = {k: x[k] for k in x.keys()}
    if isinstance(x, Mapping):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return tuple(_plain(v) for v in x)
    return x


def build(cls: type, values: Any, where: str) -> Any:
    """A (nested) frozen dataclass from a mapping; nested dataclass fields take mappings."""
    if values is None:
        return cls()
    if dataclasses.is_dataclass(values):
        return values
    values = _plain(values)
    if not isinstance(values, Mapping):
        raise TypeError(f"config.{where} must be a mapping of {cls.__name__} fields, "
                        f"got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise KeyError(f"config.{where}: unknown key(s) {unknown}; {cls.__name__} has "
                       f"{sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        target = _dataclass_in(hints.get(name))
        if target is not None and value is not None and not dataclasses.is_dataclass(value):
            value = build(target, value, f"{where}.{name}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise type(e)(f"config.{where}: {e}") from e


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass type in a hint such as `X`, `X | None` or `Optional[X]`."""
    if hint is None:
        return None
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
        return found[0] if len(found) == 1 else None
    return None


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """source: a model source of rlcot.sources ('preset:NAME', 'hf:PATH', 'gguf:PATH',
    'gguf:smollm2', 'stage:NAME', 'workdir:PATH'); tokenizer: a path or 'toyworld' (default:
    the source's own). config: ModelConfig fields for preset sources (e.g. n_layers); the
    vocabulary follows the tokenizer. reference: the KL reference's source (default: the
    initial policy)."""
    source: str = ""
    tokenizer: str | None = None
    dtype: str | None = None
    param_dtype: str | None = None
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    reference: str | None = None

    def __post_init__(self):
        if not isinstance(self.source, str):
            raise TypeError(f"model.source must be a string, got {self.source!r}")

    def check(self) -> "ModelSection":
        """Itself, once it names a source (a stage's config must; defaults leave it empty)."""
        if not self.source:
            raise ValueError("model.source is empty: name a model source, e.g. 'preset:tiny', "
                             "'hf:Qwen/Qwen2.5-0.5B', 'gguf:smollm2' or 'stage:NAME'")
        return self

    def overrides(self) -> dict[str, Any]:
        dtypes = {k: v for k, v in (("dtype", self.dtype), ("param_dtype", self.param_dtype))
                  if v is not None}
        return {**dict(self.config or {}), **dtypes}


@dataclasses.dataclass(frozen=True)
class DataSection:
    """Training prompts: a dataset of rlcot.data.registry (or 'toyworld'), its split, how
    examples become prompts, and prompts per RL step. on_bad_rows: rows that cannot be prompts
    (not UTF-8, a field the template or a reward reads missing or empty, longer than
    max_prompt_tokens) are 'skip'ped and counted, or stop the run ('error')."""
    dataset: str = "toyworld"
    split: str = "train"
    template: TemplateConfig = TemplateConfig()
    max_prompt_tokens: int | None = None
    batch_prompts: int = 16
    shuffle: bool = True
    on_bad_rows: str = "skip"

    def __post_init__(self):
        if self.batch_prompts < 1:
            raise ValueError(f"batch_prompts must be >= 1, got {self.batch_prompts}")
        if self.on_bad_rows not in ("skip", "error"):
            raise ValueError(f"on_bad_rows must be 'skip' or 'error', got {self.on_bad_rows!r}")


@dataclasses.dataclass(frozen=True)
class RolloutSection:
    """G samples per prompt and how they are drawn. DAPO dynamic sampling: drop groups whose
    `dynamic_sampling_filter` values are all equal and keep sampling fresh prompts until
    `batch_prompts` groups remain, for at most `max_rounds` generation rounds (the rest of the
    batch is then masked out). The filter is 'accuracy' (the spec's accuracy term, as DAPO),
    'total' (the shaped total reward) or a reward term label. off_policy: what to do when
    temperature != 1, top-k, top-p or min-p make the sampler's distribution differ from the
    policy the loss's ratio uses and no `learner.objective.tis_cap` corrects it: 'warn' (once,
    loudly), 'correct' (truncated importance sampling against the sampler's log-probs, cap 2)
    or 'error' (see rlcot.rollout.align_learner). shared_prefix: the KV cache layout, one
    prompt block per prompt that its G samples read (None: whenever G > 1) or a copy per
    sample (False); cache_dtype: the KV cache's dtype (None: the model's compute dtype)."""
    num_samples: int = 8
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    stop_strings: tuple[str, ...] = ()
    dynamic_sampling: bool = False
    dynamic_sampling_filter: str = "accuracy"
    max_rounds: int = 3
    recompute_old_logp: bool = True
    off_policy: str = "warn"
    shared_prefix: bool | None = None
    cache_dtype: str | None = None

    def __post_init__(self):
        if self.shared_prefix not in (None, True, False):
            raise ValueError(f"rollout.shared_prefix must be True, False or None, got "
                             f"{self.shared_prefix!r}")
        if self.cache_dtype is not None and self.cache_dtype not in ("float32", "bfloat16",
                                                                     "float16"):
            raise ValueError(f"rollout.cache_dtype must be 'float32', 'bfloat16', 'float16' or "
                             f"None, got {self.cache_dtype!r}")
        if self.num_samples < 1 or self.max_rounds < 1:
            raise ValueError(f"num_samples and max_rounds must be >= 1, got "
                             f"{self.num_samples}, {self.max_rounds}")
        if self.dynamic_sampling and self.num_samples < 2:
            raise ValueError("dynamic sampling needs num_samples >= 2 (groups to compare)")
        if not isinstance(self.dynamic_sampling_filter, str) or not self.dynamic_sampling_filter:
            raise ValueError(f"dynamic_sampling_filter must be 'accuracy', 'total' or a reward "
                             f"term label, got {self.dynamic_sampling_filter!r}")
        if self.off_policy not in ("warn", "correct", "error"):
            raise ValueError(f"off_policy must be 'warn', 'correct' or 'error', got "
                             f"{self.off_policy!r}")


@dataclasses.dataclass(frozen=True)
class TrainSection:
    """steps: RL steps (rollout + update). ref_refresh_every: copy the policy into the KL
    reference every N steps (0: never). Evaluation every `eval_every` steps (0: only before
    and after training), checkpoints every `checkpoint_every` steps and at the end."""
    steps: int = 100
    ref_refresh_every: int = 0
    eval_every: int = 0
    checkpoint_every: int = 10
    keep_checkpoints: int = 2
    log_every: int = 1
    reward_workers: int = 2

    def __post_init__(self):
        if self.steps < 0 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError(f"need steps >= 0, checkpoint_every >= 1, log_every >= 1; got "
                             f"{self.steps}, {self.checkpoint_every}, {self.log_every}")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    seed: int
    mesh: MeshConfig
    model: ModelSection
    data: DataSection
    rollout: RolloutSection
    rewards: Mapping[str, Any]
    advantage: AdvantageConfig
    learner: UpdateConfig
    train: TrainSection
    eval: Mapping[str, Any]
    world: WorldConfig

    def __post_init__(self):
        check_choices(self)


# Outcome estimators that compare the samples of a prompt (REINFORCE++ too, with its group
# baseline): with one sample per prompt every advantage is 0, so nothing is learned.
GROUP_ESTIMATORS = ("grpo", "dr_grpo", "rloo", "kimi")


def check_choices(rc: RunConfig) -> None:
    """Choices of different sections that cannot work together, named with what is allowed."""
    adv, G = rc.advantage, rc.rollout.num_samples
    grouped = adv.estimator in GROUP_ESTIMATORS or (adv.estimator == "reinforce_pp"
                                                    and adv.group_baseline)
    if grouped and G < 2:
        what = ("reinforce_pp with group_baseline=True" if adv.estimator == "reinforce_pp"
                else repr(adv.estimator))
        raise ValueError(
            f"advantage.estimator {what} compares the samples of each prompt, but "
            f"rollout.num_samples is {G}: every advantage would be 0. Set rollout.num_samples "
            f">= 2, or use an estimator for single samples: 'reinforce_pp' (group_baseline="
            f"False), 'reinforce_pp_token', or 'gae' (with learner.value)")
    if (adv.estimator == "gae") != (rc.learner.value is not None):
        raise ValueError(
            "advantage.estimator 'gae' needs a value model: set learner.value"
            if adv.estimator == "gae" else
            f"learner.value (a value model) is only used by advantage.estimator 'gae', not "
            f"{adv.estimator!r}: remove it or use 'gae'")
    kl = rc.learner.objective.kl
    if not kl.enabled:
        if rc.model.reference is not None:
            raise ValueError(f"model.reference is {rc.model.reference!r} but "
                             f"learner.objective.kl.placement is 'none', so no KL uses it: set "
                             f"the placement to 'loss' or 'reward', or remove model.reference")
        if rc.train.ref_refresh_every:
            raise ValueError(f"train.ref_refresh_every is {rc.train.ref_refresh_every} but "
                             f"learner.objective.kl.placement is 'none': there is no reference "
                             f"to refresh; set the placement to 'loss' or 'reward', or "
                             f"ref_refresh_every to 0")
    if rc.learner.lora.enabled and (rc.model.reference is not None or rc.train.ref_refresh_every):
        raise ValueError("learner.lora: the KL reference of a LoRA run is its frozen base (the "
                         "model with the adapters off); model.reference and "
                         "train.ref_refresh_every cannot be set with it")
    d, ro = rc.data, rc.rollout
    if d.max_prompt_tokens is not None and d.max_prompt_tokens < 1:
        raise ValueError(f"data.max_prompt_tokens must be >= 1 or None, got {d.max_prompt_tokens}")
    if ro.max_new_tokens < 1:
        raise ValueError(f"rollout.max_new_tokens must be >= 1, got {ro.max_new_tokens}")
    rows = d.batch_prompts * G
    try:
        rc.learner.check_rows(rows)
    except ValueError as e:
        raise ValueError(f"data.batch_prompts x rollout.num_samples = {d.batch_prompts} x {G}: "
                         f"{e} (learner.minibatches x learner.micro_batches)") from e


SECTIONS = {"mesh": MeshConfig, "model": ModelSection, "data": DataSection,
            "rollout": RolloutSection, "advantage": AdvantageConfig, "learner": UpdateConfig,
            "train": TrainSection, "world": WorldConfig}
FREEFORM = ("rewards", "eval")  # validated by their own packages
STUDY_KEYS = ("stage_order", "stages")  # the study's pipeline, validated by rlcot.study


def resolve(config: Any) -> RunConfig:
    """RunConfig from an experiment's ConfigDict (fails on unknown keys and bad values)."""
    values = _plain(config)
    known = {*SECTIONS, *FREEFORM, "seed", "name", *STUDY_KEYS}
    unknown = sorted(set(values) - known)
    if unknown:
        raise KeyError(f"config: unknown top-level key(s) {unknown}; known: {sorted(known)}")
    sections = {name: build(cls, values.get(name), name) for name, cls in SECTIONS.items()}
    if not values.get("rewards"):
        raise ValueError("config.rewards is empty: name at least one reward, e.g. "
                         "{'math_accuracy': 1.0}")
    sections["model"].check()
    return RunConfig(seed=int(values.get("seed", 0)), rewards=values["rewards"],
                     eval=values.get("eval") or {}, **sections)


_SCALARS = (bool, int, float, str)


def stage_defaults(kind: str, cls: type, fields: Mapping[str, Any]) -> Any:
    """A stage kind's ConfigDict: `kind` plus every field of `cls` (a stage config with a
    `model` section) at its default, then `fields` (nested mappings merge). The study-wide
    sections (seed, mesh, world) and model.source are left out: the stage inherits them (the
    source: the previous model stage) unless `fields` sets them."""
    from ml_collections import config_dict

    from rlcot.study import deep_merge
    base = _as_config(cls(model=ModelSection("stage:x")))
    for k in ("seed", "mesh", "world"):
        del base[k]
    del base.model["source"]
    return config_dict.ConfigDict({"kind": kind, **deep_merge(base.to_dict(), _plain(fields))})


def _as_config(obj: Any) -> Any:
    """A dataclass instance as a ConfigDict of all its init fields (recursively). A None field
    of a simple type becomes a typed placeholder, so `--config.KEY=VALUE` can still set it."""
    from ml_collections import config_dict
    if not dataclasses.is_dataclass(obj):
        return obj
    hints = typing.get_type_hints(type(obj))
    out = config_dict.ConfigDict()
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        value = getattr(obj, f.name)
        if value is None:
            simple = [a for a in typing.get_args(hints.get(f.name)) if a in _SCALARS]
            value = config_dict.placeholder(simple[0]) if len(simple) == 1 else None
        out[f.name] = _as_config(value)
    return out


def default_config() -> Any:
    """A ConfigDict holding every field of every section at its default: experiment files start
    from it and change what they study, and every knob can be overridden by name from the
    command line (`--config.learner.objective.policy.eps_high=0.28`). The free-form sections
    (rewards, eval) start empty; `world` holds the toy world's settings (used by toy sources,
    datasets and tokenizers only). stage_order / stages declare a multi-stage study
    (rlcot.study); empty: one rl stage."""
    from ml_collections import config_dict
    c = config_dict.ConfigDict()
    c.name = ""
    c.seed = 0
    for name, cls in SECTIONS.items():
        c[name] = _as_config(cls())
    c.rewards = config_dict.ConfigDict()
    c.eval = config_dict.ConfigDict()
    c.stage_order = ()
    c.stages = config_dict.ConfigDict()
    return c


