"""A study: an ordered pipeline of stages (sft, rl, generate, eval, ...) run in one workdir.

    config.stage_order = ("base", "rl")                 # the order they run in
    config.stages.base = stages.defaults("sft", ...)    # each stage: a kind + its settings
    config.stages.rl = {"kind": "rl"}                   # rl stages start from the top-level
                                                        # RL sections and override them

A study without `stages` is one `rl` stage named "rl" built from the top-level sections (a
one-stage study stays as short as an RL experiment). Every stage runs in WORKDIR/NAME and ends
with a model output or a dataset (rlcot.sources); finished stages are skipped and the
interrupted one resumes, so re-running the command after any interruption finishes the study
with the numbers of an uninterrupted run. A stage's model source defaults to the previous
model-producing stage ('stage:PREV'); the first stage's to the top-level `model.source`.

Before any stage runs, the plan is checked as a whole (stage sources, tokenizers, batch rows
over the mesh, context lengths, the fields rewards read: rlcot.preflight). SIGTERM / SIGINT
stop the running stage at a step boundary with a checkpoint (rlcot.preempt): the stage is not
marked finished, `run` raises Preempted and the command exits with status 75.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Mapping

from rlcot import preempt, run_config, sources
from rlcot.stages import KINDS, kind_module

log = logging.getLogger(__name__)

IMPLICIT_STAGE = "rl"


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def stage_order(values: Mapping[str, Any]) -> tuple[str, ...]:
    """The stage names in order, from a config's plain values."""
    stages = values.get("stages") or {}
    order = tuple(values.get("stage_order") or ())
    if not stages and not order:
        return (IMPLICIT_STAGE,)
    if not order:
        raise ValueError(f"config.stages declares {sorted(stages)} but config.stage_order is "
                         f"empty: list the stages in the order they run")
    dup = sorted({n for n in order if order.count(n) > 1})
    if dup:
        raise ValueError(f"config.stage_order names {dup} more than once")
    missing = [n for n in order if n not in stages]
    unused = sorted(set(stages) - set(order))
    if missing or unused:
        raise ValueError(f"config.stage_order {list(order)} and config.stages {sorted(stages)} "
                         f"disagree: not declared {missing}, not in the order {unused}")
    for n in order:
        if not n or "/" in n or n.startswith(".") or n in ("eval", "checkpoints"):
            raise ValueError(f"stage name {n!r} is not a valid directory name for a stage")
    return order


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    kind: str
    cfg: Any                      # the kind's resolved, frozen config
    makes_model: bool


@dataclasses.dataclass(frozen=True)
class Plan:
    stages: tuple[Stage, ...]

    @property
    def order(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    def __getitem__(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage {name!r}; stages: {list(self.order)}")


def plan(config: Any) -> Plan:
    """Resolves and checks every stage before anything runs: unknown kinds and keys, bad
    values, `stage:` sources that name a missing, later or non-model stage, and tokenizers
    that differ from the model source's."""
    values = run_config._plain(config)
    order = stage_order(values)
    top = {k: v for k, v in values.items() if k not in ("stages", "stage_order", "name")}
    declared = values.get("stages") or {IMPLICIT_STAGE: {"kind": "rl"}}
    out: list[Stage] = []
    last_model: str | None = None
    for i, name in enumerate(order):
        spec = dict(declared[name] or {})
        kind = spec.pop("kind", None)
        if kind not in KINDS:
            raise ValueError(f"config.stages.{name}.kind is {kind!r}; known kinds: "
                             f"{sorted(KINDS)}")
        module = kind_module(kind)
        merged = deep_merge(module.inherited(top), spec)
        own_source = (spec.get("model") or {}).get("source")
        if own_source is None and last_model is not None and "model" in merged:
            merged["model"] = {**merged["model"], "source": f"stage:{last_model}",
                               "tokenizer": None, "config": {}}
        try:
            cfg = module.resolve(merged)
        except (KeyError, TypeError, ValueError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            raise type(e)(f"stage {name!r} ({kind}): {msg}") from e
        earlier = {s.name: s for s in out}
        for field, src in module.sources(cfg).items():
            _check_stage_source(name, field, src, earlier, order)
        out.append(Stage(name, kind, cfg, module.MAKES_MODEL))
        if module.MAKES_MODEL:
            last_model = name
    return Plan(tuple(out))


def _check_stage_source(name: str, field: str, src: str | None, earlier: Mapping[str, Stage],
                        order: tuple[str, ...]) -> None:
    if not src or not src.startswith("stage:"):
        return
    target = src[len("stage:"):]
    if target == name:
        raise ValueError(f"stage {name!r}: {field} = {src!r} names the stage itself (a cycle)")
    if target not in order:
        raise ValueError(f"stage {name!r}: {field} = {src!r} names no stage of this study; "
                         f"stages: {list(order)}")
    if target not in earlier:
        raise ValueError(f"stage {name!r}: {field} = {src!r} names a later stage (stages run "
                         f"in the order {list(order)})")
    wants_model = field.startswith("model")
    if wants_model and not earlier[target].makes_model:
        raise ValueError(f"stage {name!r}: {field} = {src!r}, but stage {target!r} "
                         f"({earlier[target].kind}) produces no model")
    if not wants_model and earlier[target].makes_model:
        raise ValueError(f"stage {name!r}: {field} = {src!r}, but stage {target!r} "
                         f"({earlier[target].kind}) produces a model, not a dataset")


def check_tokenizers(p: Plan, resolver: sources.Resolver) -> None:
    """A stage that names its own tokenizer must use its model source's (same vocabulary):
    checked on the references before any stage runs, and on the loaded vocabularies of stage
    outputs that exist."""
    refs: dict[str, str | None] = {}
    for st in p.stages:
        model = getattr(st.cfg, "model", None)
        if model is None:
            continue
        src = model.source
        upstream = None
        if src.startswith("stage:"):
            upstream = refs.get(src[len("stage:"):])
        elif src.startswith("workdir:"):
            upstream = resolver.tokenizer_ref(src)
        if model.tokenizer is not None and upstream is not None and model.tokenizer != upstream:
            raise ValueError(
                f"stage {st.name!r}: model.tokenizer {model.tokenizer!r} is not the tokenizer of "
                f"its model source {src!r} ({upstream!r}); a policy must keep its vocabulary")
        ref = model.tokenizer or upstream or (
            resolver.tokenizer_ref(src) if not src.startswith("stage:") else None)
        if ref is None:
            raise ValueError(f"stage {st.name!r}: model {src!r} comes without a tokenizer (or "
                             f"is missing): set model.tokenizer (a tokenizer file or "
                             f"directory, or '{sources.TOY_TOKENIZER}')")
        if ref != sources.TOY_TOKENIZER and not Path(ref).expanduser().exists():
            raise ValueError(f"stage {st.name!r}: tokenizer {ref!r} (model.tokenizer, or its "
                             f"model source's) does not exist")
        refs[st.name] = ref


@dataclasses.dataclass(frozen=True)
class StageContext:
    """What a stage driver gets besides its config."""
    name: str
    dir: Path
    study_dir: Path
    resolver: sources.Resolver


def run(config: Any, workdir: str | Path, only: str | None = None) -> dict[str, Any]:
    """Runs the study's stages in order (or only `only`), skipping finished ones; returns the
    study summary (also written to WORKDIR/summary.json)."""
    from rlcot.workdir import write_json
    p = plan(config)
    if only is not None and only not in p.order:
        raise KeyError(f"--stage {only!r}: no such stage; stages: {list(p.order)}")
    workdir = Path(workdir)
    from rlcot import distributed
    # Before anything is written or compiled: with several processes, only the stage kinds
    # that are multi-process correct may run (finished stages are skipped, so they may be any).
    distributed.check_stage_kinds({
        st.name: st.kind for st in p.stages
        if (only is None or st.name == only) and not sources.is_finished(workdir / st.name)})
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(workdir / "config.json", run_config._plain(config))
    world = next((getattr(s.cfg, "world", None) for s in p.stages), None)
    resolver = sources.Resolver(study_dir=workdir.absolute(), world=world)
    check_tokenizers(p, resolver)
    from rlcot import preflight
    preflight.check_plan(p, resolver)
    write_summary(workdir, p.order, 0.0)  # the stage order, readable while the study runs
    t0 = time.perf_counter()
    with preempt.on_signals():
        try:
            _run_stages(p, workdir, only, resolver)
        except preempt.Preempted as e:
            write_summary(workdir, p.order, time.perf_counter() - t0)
            log.warning("study %s: %s (exit status %d)", workdir, e, preempt.EXIT_PREEMPTED)
            raise
    return write_summary(workdir, p.order, time.perf_counter() - t0)


def _run_stages(p: Plan, workdir: Path, only: str | None, resolver: sources.Resolver) -> None:
    from rlcot.workdir import write_json
    ran: list[str] = []
    for i, st in enumerate(p.stages):
        stage_dir = workdir / st.name
        if only is not None and st.name != only:
            continue
        key = config_key(st.cfg)
        if sources.is_finished(stage_dir):
            import json
            done = json.loads((stage_dir / sources.SUMMARY_FILE).read_text())
            if done.get("config_key") != key:
                raise ValueError(
                    f"stage {st.name!r} in {workdir} finished with other settings than the "
                    f"config's now; use a new --workdir, or delete {stage_dir / 'summary.json'} "
                    f"to resume that stage (and re-run the later ones) with the new settings")
            if ran:
                raise ValueError(f"stage {ran[-1]!r} ran again, so the finished stage "
                                 f"{st.name!r} after it is stale: delete {stage_dir} to re-run it")
            log.info("stage %d/%d %s (%s): finished, skipped", i + 1, len(p.stages), st.name,
                     st.kind)
            continue
        if preempt.stop_requested():
            raise preempt.Preempted(f"the study before stage {st.name}")
        log.info("stage %d/%d %s (%s)", i + 1, len(p.stages), st.name, st.kind)
        stage_dir.mkdir(parents=True, exist_ok=True)
        ctx = StageContext(st.name, stage_dir, workdir.absolute(), resolver)
        ran.append(st.name)
        summary = kind_module(st.kind).run(st.cfg, ctx)
        write_json(stage_dir / sources.SUMMARY_FILE,
                   {**summary, "kind": st.kind, "stage": st.name, "config_key": key,
                    "finished": True})


# Settings that cannot change what a stage produces, only whether it fails: left out of the
# key, so that a study directory stays reusable when they are set or added.
NOT_IN_KEY = (("data", "on_bad_rows"),)


def config_key(cfg: Any) -> str:
    """A digest of a stage's resolved settings (a finished stage is reused only under it)."""
    import hashlib
    import json
    values = dataclasses.asdict(cfg)
    for section, name in NOT_IN_KEY:
        if isinstance(values.get(section), dict):
            values[section].pop(name, None)
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_summary(workdir: Path, order: tuple[str, ...], wall_s: float) -> dict[str, Any]:
    """WORKDIR/summary.json: every stage's summary under `stages`, the last stage's keys at the
    top level, and `finished` once every stage is."""
    import json

    from rlcot.workdir import write_json
    stages: dict[str, Any] = {}
    for name in order:
        path = workdir / name / sources.SUMMARY_FILE
        if path.is_file():
            stages[name] = json.loads(path.read_text())
    finished = all(sources.is_finished(workdir / n) for n in order)
    last = stages.get(order[-1], {}) if finished else {}
    summary = {**copy.deepcopy(last), "stage_order": list(order), "stages": stages,
               "finished": finished, "study_wall_time_s": round(wall_s, 2)}
    write_json(workdir / sources.SUMMARY_FILE, summary)
    return summary
