"""Evaluation settings as frozen, validated dataclasses: which sets (EvalSet) and how (EvalConfig)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from rlcot.data.templates import TemplateConfig
from rlcot.sampling.spec import SamplingSpec

SUBSETS = ("first", "random")

# Where a template's answer ends when the model does not stop by itself: the R1-Zero answer
# tag, and the start of a next question in the plain question/answer format.
TEMPLATE_STOP_STRINGS: dict[str, tuple[str, ...]] = {
    "r1_zero": ("</answer>",),
    "qa": ("\nQuestion:",),
    "chat": (),
    "raw": (),
}


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """One benchmark split, or an in-memory list of examples.

    name: a key of rlcot.data.registry.DATASETS (or any label when `examples` is given).
    limit: evaluate only `limit` rows (None: all). subset: which rows — 'first' takes the
    first `limit` rows in source order (the same rows for every seed, so numbers compare
    across models and runs); 'random' takes a uniform sample without replacement drawn with
    `subset_seed` (numpy's default_rng), kept in source order. Few-shot rows drawn from the
    same split are excluded before the subset is taken. The limit applies before prompts
    longer than max_prompt_tokens are dropped (the table reports how many were).
    examples: in-memory examples (dicts with 'question', 'answer', ...), for tests and ad-hoc
    sets; they are not part of equality or hashing.
    scorer: a reward name of rlcot.rewards.REWARDS that decides correctness (None: the
    dataset's default, see `default_scorer`).
    """

    name: str
    split: str = "test"
    limit: int | None = None
    subset: str = "first"
    subset_seed: int = 0
    scorer: str | None = None
    examples: tuple[Mapping[str, Any], ...] | None = dataclasses.field(
        default=None, compare=False, repr=False)

    def __post_init__(self):
        if not self.name or not self.split:
            raise ValueError(f"EvalSet needs a name and a split, got {self.name!r}:{self.split!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"EvalSet {self.label}: limit must be a positive int or None, "
                             f"got {self.limit!r}")
        if self.subset not in SUBSETS:
            raise ValueError(f"EvalSet {self.label}: subset must be one of {SUBSETS}, "
                             f"got {self.subset!r}")
        if self.examples is not None:
            object.__setattr__(self, "examples", tuple(self.examples))
            if not self.examples:
                raise ValueError(f"EvalSet {self.label}: examples is empty")
        else:
            from rlcot.data.registry import get_spec
            spec = get_spec(self.name)  # KeyError naming the known datasets
            if self.split not in spec.splits:
                raise ValueError(f"EvalSet {self.label}: dataset {self.name!r} has splits "
                                 f"{spec.splits}, not {self.split!r}")
        if self.scorer is not None:
            from rlcot.rewards.registry import REWARDS
            if self.scorer not in REWARDS:
                raise ValueError(f"EvalSet {self.label}: unknown scorer {self.scorer!r}; "
                                 f"known: {sorted(REWARDS)}")

    @property
    def label(self) -> str:
        """The benchmark's row name in tables: 'name:split'."""
        return f"{self.name}:{self.split}"


def split_eval_set(text: str) -> tuple[str, str, int | None]:
    """'name:split[:limit]' -> (name, split, limit)."""
    parts = text.split(":") if isinstance(text, str) else []
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"eval set {text!r} must look like 'name:split' or 'name:split:limit'")
    limit = None
    if len(parts) == 3:
        try:
            limit = int(parts[2])
        except ValueError:
            raise ValueError(f"eval set {text!r}: limit {parts[2]!r} is not an integer") from None
    return parts[0], parts[1], limit


def parse_eval_set(text: str, *, subset: str = "first", subset_seed: int = 0) -> EvalSet:
    """'name:split[:limit]' -> EvalSet, e.g. 'gsm8k:test:200' (first 200 rows) or 'math500:test'."""
    name, split, limit = split_eval_set(text)
    return EvalSet(name, split, limit, subset, subset_seed)


def default_scorer(name: str) -> str:
    """The reward that decides correctness for a registered dataset (math answers by default)."""
    from rlcot.data.registry import DATASETS
    builder = DATASETS[name].builder if name in DATASETS else ""
    return {"rlcot_humaneval": "code_tests",
            "rlcot_reasoning_gym": "reasoning_gym"}.get(builder, "math_accuracy")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """How to evaluate.

    template: how examples become prompts (instruction None: the dataset's default).
    greedy: run the greedy pass (greedy pass@1). num_samples (k): samples per prompt of the
    sampled pass, which runs when k > 1 or when greedy is off; it gives avg@k (= sampled
    pass@1), unbiased pass@k for k in `pass_ks` (None: 2, 4, ... below k, and k) and maj@k.
    batch_size: completions per generate call (the sampled pass puts batch_size // k prompts
    in each call, at least one), so memory does not grow with k.
    stop_strings: None -> the template's default (TEMPLATE_STOP_STRINGS); generation also
    stops at the tokenizer's end-of-generation ids.
    check_format: score the strict R1-Zero format (None: when the template is r1_zero).
    reward_workers: worker processes for scoring (0: in this process; per-item time limits
    still apply on the main thread). Each scorer uses its own time limit per item.
    data_dir / source_dir: where TFDS builds live and where raw benchmark files are read
    (None: TFDS's default / $RLCOT_SHARED_DATA).
    """

    template: TemplateConfig = TemplateConfig()
    max_prompt_tokens: int | None = None
    max_new_tokens: int = 256
    greedy: bool = True
    num_samples: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    pass_ks: tuple[int, ...] | None = None
    batch_size: int = 16
    stop_strings: tuple[str, ...] | None = None
    check_format: bool | None = None
    reward_workers: int = 0
    data_dir: str | None = None
    source_dir: str | None = None

    def __post_init__(self):
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be >= 1 or None, got {self.max_prompt_tokens}")
        if not isinstance(self.num_samples, int) or self.num_samples < 1:
            raise ValueError(f"num_samples must be an int >= 1, got {self.num_samples!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        if self.pass_ks is not None:
            object.__setattr__(self, "pass_ks", tuple(self.pass_ks))
            bad = [k for k in self.pass_ks if not isinstance(k, int) or not 1 <= k <= self.num_samples]
            if bad:
                raise ValueError(f"pass_ks {self.pass_ks}: {bad} not in [1, num_samples="
                                 f"{self.num_samples}]")
        if self.stop_strings is not None:
            object.__setattr__(self, "stop_strings", tuple(self.stop_strings))
        if self.reward_workers < 0:
            raise ValueError(f"reward_workers must be >= 0, got {self.reward_workers}")
        # Builds both specs now: bad sampling settings fail before any compute.
        self.greedy_spec((), ())
        if self.sampled:
            self.sampled_spec((), ())

    @property
    def sampled(self) -> bool:
        return self.num_samples > 1 or not self.greedy

    @property
    def resolved_stop_strings(self) -> tuple[str, ...]:
        if self.stop_strings is not None:
            return self.stop_strings
        return TEMPLATE_STOP_STRINGS[self.template.name]

    @property
    def resolved_check_format(self) -> bool:
        return self.template.name == "r1_zero" if self.check_format is None else self.check_format

    def greedy_spec(self, stop_ids: Sequence[int], stop_strings: Sequence[str]) -> SamplingSpec:
        return SamplingSpec(max_new_tokens=self.max_new_tokens, greedy=True,
                            stop_ids=tuple(stop_ids), stop_strings=tuple(stop_strings))

    def sampled_spec(self, stop_ids: Sequence[int], stop_strings: Sequence[str]) -> SamplingSpec:
        return SamplingSpec(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                            top_p=self.top_p, top_k=self.top_k, stop_ids=tuple(stop_ids),
                            stop_strings=tuple(stop_strings))

    @property
    def resolved_pass_ks(self) -> tuple[int, ...]:
        if self.pass_ks is not None:
            return self.pass_ks
        from rlcot.evaluation.metrics import default_ks
        return tuple(k for k in default_ks(self.num_samples) if k > 1)


# config.eval keys -> where they go; anything else fails before the model is loaded.
_SET_KEYS = ("datasets", "subset", "subset_seed")
_TEMPLATE_KEYS = {"template": "name", "instruction": "instruction", "system": "system",
                  "shots": "num_shots", "fewshot_seed": "fewshot_seed"}
_CLI_KEYS = ("use_checkpoint",)
_CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(EvalConfig) if f.name != "template")


def _plain(value: Any) -> Any:
    """ConfigDict values as plain Python (lists -> tuples, ConfigDicts -> dicts)."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    return value


def parse_eval_config(ev: Mapping[str, Any], custom_set: Any = None
                      ) -> tuple[tuple[EvalSet, ...], EvalConfig, bool]:
    """config.eval -> (eval sets, EvalConfig, use_checkpoint); unknown keys fail.

    custom_set: optional `(name, split, limit) -> EvalSet | None` for sets that are not in
    the data registry (e.g. the toy world's in-memory splits); None falls back to the registry.
    """
    ev = dict(_plain(ev))
    known = (*_SET_KEYS, *_TEMPLATE_KEYS, *_CLI_KEYS, *_CONFIG_KEYS)
    unknown = sorted(k for k in ev if k not in known)
    if unknown:
        raise ValueError(f"unknown config.eval keys {unknown}; known: {sorted(known)}")
    datasets = ev.get("datasets")
    if isinstance(datasets, str):
        datasets = (datasets,)
    if not datasets:
        raise ValueError("config.eval.datasets is empty: give e.g. ('gsm8k:test:200',)")
    subset = dict(subset=ev.get("subset", "first"), subset_seed=int(ev.get("subset_seed", 0)))
    sets = tuple(_custom(custom_set, d) or parse_eval_set(d, **subset) for d in datasets)
    template = TemplateConfig(**{field: ev[key] for key, field in _TEMPLATE_KEYS.items()
                                 if key in ev and ev[key] is not None})
    kwargs = {k: ev[k] for k in _CONFIG_KEYS if k in ev and ev[k] is not None}
    cfg = EvalConfig(template=template, **kwargs)
    return sets, cfg, bool(ev.get("use_checkpoint", True))


def _custom(custom_set: Any, text: str) -> EvalSet | None:
    return None if custom_set is None else custom_set(*split_eval_set(text))
