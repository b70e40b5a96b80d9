"""What an experiment file declares beside get_config: `get_sweep(arg) -> Sweep`, the arms
(table rows) crossed with seeds, and the `Table` the runs end in.

    def get_sweep(arg=None):
        return spec.Sweep(
            arms=spec.grid({"learner.objective.kl.coef": (0.0, 0.01, 0.1)}),
            seeds=(0, 1, 2),
            table=spec.Table(metrics=(spec.Metric("greedy pass@1 (%)",
                                                  "eval_after.toyworld:test/greedy/pass@1",
                                                  scale=100),)))

A point is one arm at one seed; it runs in ROOT/<arm dir>/seed_<seed>, names made from the
settings (stable: the same declaration gives the same names on every machine).

When one study holds several methods as stages (Kimi's long2short methods all start from
the same long model), its rows are views: `Arm("dpo", run="study", stage="dpo")` runs
nothing itself and reads stage `dpo` of arm `study`'s runs (its summary and curves).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import re
import sys
from pathlib import Path
from typing import Any, Mapping

_SAFE = re.compile(r"[^A-Za-z0-9._,=+-]")
REDUCE = ("final", "sum", "max", "min", "mean")


def slug(name: str) -> str:
    """A filesystem- and shell-safe directory name: [A-Za-z0-9._,=+-], anything else -> '_'."""
    s = _SAFE.sub("_", name)
    if s in ("", ".", "..") or s.startswith("-"):
        s = "_" + s
    return s


def format_value(v: Any) -> str:
    """A value as `--config.KEY=` takes it (and as directory names show it)."""
    if isinstance(v, bool) or isinstance(v, (int, str)):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (tuple, list)):
        return repr(tuple(v))
    raise TypeError(f"sweep values must be bool, int, float, str or tuple, got {v!r}")


@dataclasses.dataclass(frozen=True)
class Arm:
    """One row of the table: a name, config overrides (dotted keys), and optionally its own
    get_config argument (`arg`; None: the sweep's own variant) for changes that are not
    scalar overrides (a new reward term, a critic).

    stage: read this stage of the study's runs (its summary under `stages.NAME` and its
    metrics.jsonl) instead of the final stage. run: the name of another arm whose runs this
    row reads (a view: it runs nothing itself, and has no overrides or arg of its own).
    in_table: False for an arm that only runs (the study its views read), without a row."""
    name: str
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    arg: str | None = None
    stage: str | None = None
    run: str | None = None
    in_table: bool = True

    def __post_init__(self):
        if not self.name:
            raise ValueError("an arm needs a name")
        if self.run is not None and (self.overrides or self.arg is not None):
            raise ValueError(f"arm {self.name!r} reads the runs of arm {self.run!r}: it cannot "
                             f"have overrides or an arg of its own")
        if self.stage is not None and (not self.stage or "/" in self.stage):
            raise ValueError(f"arm {self.name!r}: bad stage name {self.stage!r}")
        object.__setattr__(self, "overrides", dict(self.overrides))
        for k, v in self.overrides.items():
            if not k or k.startswith(".") or k.endswith(".") or ".." in k:
                raise ValueError(f"arm {self.name!r}: bad config key {k!r}")
            format_value(v)

    @property
    def dirname(self) -> str:
        return slug(self.name)


def grid(axes: Mapping[str, tuple[Any, ...]], *, arg: str | None = None,
         base: Mapping[str, Any] | None = None) -> tuple[Arm, ...]:
    """Arms for every combination of the axes' values, named `key=value,...` with each key
    shortened to its shortest dotted suffix that is unique among the axes."""
    keys = list(axes)
    for k in keys:
        if not axes[k]:
            raise ValueError(f"grid axis {k!r} has no values")
    short = {k: _short_name(k, keys) for k in keys}
    arms = []
    for values in itertools.product(*(axes[k] for k in keys)):
        name = ",".join(f"{short[k]}={format_value(v)}" for k, v in zip(keys, values))
        arms.append(Arm(name or "base", {**(base or {}), **dict(zip(keys, values))}, arg))
    return tuple(arms)


def _short_name(key: str, keys: list[str]) -> str:
    parts = key.split(".")
    for n in range(1, len(parts) + 1):
        cand = ".".join(parts[-n:])
        if all(o == key or not (o == cand or o.endswith("." + cand)) for o in keys):
            return cand
    return key


@dataclasses.dataclass(frozen=True)
class Metric:
    """A table column. `path`: dotted path into the run's summary.json (see results.lookup),
    or, with `curve`, a per-step key of the stage's metrics.jsonl reduced over steps by
    `reduce`. divide_by: a second summary path; the metric is path's value over it (e.g. mean
    tokens over accuracy = tokens per correct answer; none where the divisor is 0). Shown as
    value * scale with `digits` decimals."""
    name: str
    path: str = ""
    curve: str = ""
    reduce: str = "final"
    scale: float = 1.0
    digits: int = 1
    divide_by: str = ""

    def __post_init__(self):
        if bool(self.path) == bool(self.curve):
            raise ValueError(f"metric {self.name!r}: give exactly one of path and curve")
        if self.divide_by and not self.path:
            raise ValueError(f"metric {self.name!r}: divide_by needs a path metric")
        if self.reduce not in REDUCE:
            raise ValueError(f"metric {self.name!r}: reduce must be one of {REDUCE}, "
                             f"got {self.reduce!r}")
        if self.digits < 0:
            raise ValueError(f"metric {self.name!r}: digits must be >= 0")


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """A plot of one per-step metric against another along training (e.g. the true score
    against the learned reward over PPO steps: the over-optimisation curve). curves: (label,
    stage) pairs, read from that stage of every run of the sweep's running arms (mean over
    seeds at each step; one faint line per seed)."""
    title: str
    x: str
    y: str
    curves: tuple[tuple[str, str], ...]

    def __post_init__(self):
        object.__setattr__(self, "curves", tuple((str(a), str(b)) for a, b in self.curves))
        if not self.curves:
            raise ValueError(f"trajectory {self.title!r} has no curves")


@dataclasses.dataclass(frozen=True)
class Table:
    """The sweep's table. select: 'final' (each run's summary values), or best step by a
    curve key, 'max:KEY' / 'min:KEY' (e.g. 'max:eval/toyworld:test/greedy/pass@1'): eval and
    train metrics are then read at that step of each run. main: the metric of the bar chart
    (default the first). baseline: an arm name; each row gets Welch's t-test against it.
    stage: the stage whose curves are read (default the study's final stage; an arm's own
    `stage` wins). panels: more (title, per-step key pattern) curves for the plot command,
    after its default ones. scatter: (x metric, y metric) names: the plot command also draws
    one point per arm and seed (e.g. accuracy against response length, a frontier).
    trajectories: Trajectory plots the plot command draws too."""
    metrics: tuple[Metric, ...]
    select: str = "final"
    main: str | None = None
    baseline: str | None = None
    stage: str | None = None
    row_keys: tuple[str, ...] = ()
    panels: tuple[tuple[str, str], ...] = ()
    scatter: tuple[str, str] | None = None
    trajectories: tuple[Trajectory, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "metrics", tuple(self.metrics))
        object.__setattr__(self, "trajectories", tuple(self.trajectories))
        object.__setattr__(self, "panels", tuple((str(t), str(k)) for t, k in self.panels))
        if not self.metrics:
            raise ValueError("a table needs at least one metric")
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"metric names repeat: {names}")
        if self.scatter is not None:
            object.__setattr__(self, "scatter", tuple(self.scatter))
            bad = [n for n in self.scatter if n not in names]
            if len(self.scatter) != 2 or bad:
                raise ValueError(f"scatter must name two of the metrics {names}, got "
                                 f"{self.scatter!r}")
        if self.main is not None and self.main not in names:
            raise ValueError(f"main metric {self.main!r} is not one of {names}")
        if self.select != "final" and not re.fullmatch(r"(max|min):.+", self.select):
            raise ValueError(f"select must be 'final', 'max:KEY' or 'min:KEY', "
                             f"got {self.select!r}")

    @property
    def main_metric(self) -> Metric:
        return next(m for m in self.metrics if m.name == (self.main or self.metrics[0].name))


@dataclasses.dataclass(frozen=True)
class Point:
    arm: Arm
    seed: int
    seed_key: str

    @property
    def name(self) -> str:
        return f"{self.arm.dirname}/seed_{self.seed}"

    @property
    def overrides(self) -> dict[str, Any]:
        return {**self.arm.overrides, self.seed_key: self.seed}


@dataclasses.dataclass(frozen=True)
class Sweep:
    arms: tuple[Arm, ...]
    table: Table
    seeds: tuple[int, ...] = (0,)
    seed_key: str = "seed"

    def __post_init__(self):
        object.__setattr__(self, "arms", tuple(self.arms))
        object.__setattr__(self, "seeds", tuple(self.seeds))
        if not self.arms or not self.seeds:
            raise ValueError("a sweep needs at least one arm and one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds repeat: {self.seeds}")
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names repeat: {names}")
        running = {a.name for a in self.arms if a.run is None}
        for a in self.arms:
            if a.run is not None and a.run not in running:
                raise ValueError(f"arm {a.name!r} reads the runs of {a.run!r}, which is not an "
                                 f"arm that runs: {sorted(running)}")
        dirs: dict[str, str] = {}
        for a in self.running_arms:
            if a.dirname in dirs:
                raise ValueError(f"arms {dirs[a.dirname]!r} and {a.name!r} share the directory "
                                 f"name {a.dirname!r}: rename one")
            dirs[a.dirname] = a.name
            if self.seed_key in a.overrides:
                raise ValueError(f"arm {a.name!r} sets the seed key {self.seed_key!r}; seeds "
                                 f"come from Sweep.seeds")
        shown = [a.name for a in self.table_arms]
        if not shown:
            raise ValueError("no arm is in the table (in_table=False for every arm)")
        if self.table.baseline is not None and self.table.baseline not in shown:
            raise ValueError(f"baseline {self.table.baseline!r} is not an arm of the table: "
                             f"{shown}")

    @property
    def table_arms(self) -> tuple[Arm, ...]:
        """The arms with a row in the table (and a line in the plots)."""
        return tuple(a for a in self.arms if a.in_table)

    @property
    def running_arms(self) -> tuple[Arm, ...]:
        """The arms that run (views excluded)."""
        return tuple(a for a in self.arms if a.run is None)

    def points(self) -> list[Point]:
        """Arm-major order (all seeds of the first arm, then the next arm); views run
        nothing."""
        return [Point(a, s, self.seed_key) for a in self.running_arms for s in self.seeds]

    def run_dir(self, root: str | Path, arm: Arm, seed: int) -> Path:
        """The directory holding the run an arm's row reads at one seed."""
        owner = arm if arm.run is None else next(a for a in self.arms if a.name == arm.run)
        return Path(root) / owner.dirname / f"seed_{seed}"


def split_config(spec: str) -> tuple[str, str | None]:
    """'experiments/NAME.py:VARIANT' -> (path, variant or None)."""
    path, _, arg = spec.partition(":")
    return path, (arg or None)


def load_experiment(path: str | Path, reuse: bool = True) -> Any:
    """An experiment file as a module, by path (experiment files that build on another, e.g.
    on r1_zero's toy study, work from any directory). reuse: the module loaded earlier in this
    process from the same path, if any; False executes the file again."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"experiment file {str(path)!r} not found")
    name = f"_rlcot_experiment_{slug(Path(path).stem)}"
    loaded = sys.modules.get(name)
    if not reuse or loaded is None or Path(loaded.__file__).resolve() != Path(path).resolve():
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # dataclasses in the file need their module registered
        module_spec.loader.exec_module(module)
    return sys.modules[name]


def load_sweep(config_spec: str) -> Sweep:
    """The Sweep an experiment file declares: get_sweep(VARIANT) of experiments/NAME.py."""
    path, arg = split_config(config_spec)
    module = load_experiment(path, reuse=False)
    if not hasattr(module, "get_sweep"):
        raise AttributeError(f"{path} declares no get_sweep(arg): nothing to sweep")
    sweep = module.get_sweep(arg)
    if not isinstance(sweep, Sweep):
        raise TypeError(f"{path}: get_sweep({arg!r}) returned {type(sweep).__name__}, "
                        f"not a Sweep")
    return sweep


def parse_arg(arg: str | None, **defaults: Any) -> dict[str, Any]:
    """A get_config/get_sweep argument 'key=value,flag' -> dict over `defaults` (values take
    the default's type; a bare name sets a bool to True). Unknown names are errors."""
    out = dict(defaults)
    for part in filter(None, (arg or "").split(",")):
        key, eq, value = part.partition("=")
        if key not in defaults:
            raise ValueError(f"unknown argument {key!r} in {arg!r}; known: {sorted(defaults)}")
        kind = type(defaults[key])
        if not eq:
            if kind is not bool:
                raise ValueError(f"argument {key!r} needs a value ({key}=...)")
            out[key] = True
        elif kind is bool:
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"argument {key!r} takes true/false, got {value!r}")
            out[key] = value.lower() in ("true", "1")
        else:
            out[key] = kind(value) if defaults[key] is not None else value
    return out
