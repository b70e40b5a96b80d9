"""Running a sweep: every point's config checked before anything runs, then one
`rlcot.main run` process per point, N at once, each pinned to its share of the cores, all
sharing one JAX compilation cache under the root. Finished points are skipped; unfinished ones
are simply run again (the run command resumes from its workdir)."""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from rlcot.preempt import EXIT_PREEMPTED
from rlcot.sweep import results
from rlcot.sweep.spec import Point, Sweep, format_value, split_config

RUN_COMMAND = ("-m", "rlcot.main", "run")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class SweepKeyError(KeyError):
    """A sweep override names a config key that does not exist."""

    def __str__(self) -> str:
        return str(self.args[0])


def point_config_spec(config_spec: str, point: Point) -> str:
    path, variant = split_config(config_spec)
    arg = point.arm.arg if point.arm.arg is not None else variant
    return f"{path}:{arg}" if arg else path


def point_argv(config_spec: str, point: Point, root: str | Path) -> list[str]:
    """The run command's arguments after the interpreter: -m rlcot.main run --config ..."""
    workdir = Path(root) / point.name
    return [*RUN_COMMAND, f"--config={point_config_spec(config_spec, point)}",
            f"--workdir={workdir}",
            *(f"--config.{k}={format_value(v)}" for k, v in point.overrides.items())]


def shell_command(config_spec: str, point: Point, root: str | Path) -> str:
    """One line a scheduler (or a TPU VM) can run as is."""
    return shlex.join(["python", *point_argv(config_spec, point, root)])


def _check_key(config: Any, key: str, where: str) -> None:
    node, walked = config, []
    for part in key.split("."):
        keys = list(node.keys()) if hasattr(node, "keys") else []
        if part not in keys:
            at = "config" + "".join(f".{w}" for w in walked)
            raise SweepKeyError(f"sweep key {key!r} is not in the config of {where} ({at} has "
                                f"{sorted(keys) if keys else 'no fields'})")
        node, walked = node[part], [*walked, part]
    if hasattr(node, "keys"):
        raise SweepKeyError(f"sweep key {key!r} of {where} is a section; sweep its fields")


def _parse_flags(argv: list[str]) -> Any:
    from absl import flags
    from ml_collections import config_flags
    fv = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", None, flag_values=fv, sys_argv=argv,
                                             lock_config=True)
    with warnings.catch_warnings():  # ml_collections loads the file with load_module()
        warnings.simplefilter("ignore", DeprecationWarning)
        fv(argv)
    return holder.value


def resolve_study(config: Any) -> Any:
    """What the run command checks before any compute: every stage of the study resolved
    (rlcot.study.plan)."""
    from rlcot.study import plan
    return plan(config)


def point_config(config_spec: str, point: Point) -> Any:
    """The ConfigDict the point's run command will see, built the way that command builds
    it (ml_collections' config flag over the same arguments), then resolved."""
    spec = point_config_spec(config_spec, point)
    argv = ["sweep", *(a for a in point_argv(config_spec, point, "ROOT")[3:]
                       if not a.startswith("--workdir="))]
    try:
        config = _parse_flags(argv)
    except Exception as e:  # noqa: BLE001 (absl and ml_collections raise many kinds)
        base = _parse_flags(argv[:2])
        for key in point.overrides:
            _check_key(base, key, spec)
        raise ValueError(f"sweep point {point.name} ({spec}): {e}") from e
    try:
        resolve_study(config)
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"sweep point {point.name} ({spec}): {e}") from e
    return config


def check_points(config_spec: str, sweep: Sweep) -> None:
    """Every point's config builds and resolves; the first bad one raises, naming it."""
    for p in sweep.points():
        point_config(config_spec, p)


def cpu_slots(parallel: int, cpus: Sequence[int] | None = None) -> list[list[int]]:
    """The usable cores split into `parallel` disjoint equal slots (extra cores go unused so
    every point runs at the same speed); with more slots than cores, slots share cores."""
    cpus = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
    if parallel <= len(cpus):
        k = len(cpus) // parallel
        return [cpus[i * k:(i + 1) * k] for i in range(parallel)]
    return [[cpus[i % len(cpus)]] for i in range(parallel)]


def point_env(root: Path, cpus: Sequence[int] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str((root / "jax_cache").resolve()))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    if cpus is not None:
        for name in THREAD_ENV:
            env[name] = str(len(cpus))
    return env


@dataclasses.dataclass
class _Running:
    point: Point
    proc: subprocess.Popen
    slot: int
    start: float
    log: Any


def _fmt_s(s: float) -> str:
    return f"{int(s // 60)}m{int(s % 60):02d}s"


def run_sweep(config_spec: str, sweep: Sweep, root: str | Path, *, parallel: int = 1,
              python: Sequence[str] = (sys.executable,), poll_s: float = 0.5,
              echo: Callable[[str], None] = print) -> list[Point]:
    """Runs every point that is not finished; returns the points that did not finish (failed,
    or stopped by a preemption signal: exit 75, resumed by the next sweep)."""
    if parallel < 1:
        raise ValueError(f"--parallel must be >= 1, got {parallel}")
    root = Path(root)
    check_points(config_spec, sweep)
    points = sweep.points()
    todo = []
    for i, p in enumerate(points, 1):
        status = results.run_status(root / p.name)
        if status == results.FINISHED:
            echo(f"[{i}/{len(points)}] {p.name}: finished before, skipped")
        else:
            todo.append(p)
            if status == results.UNFINISHED:
                echo(f"[{i}/{len(points)}] {p.name}: unfinished, will resume")
    (root / "logs").mkdir(parents=True, exist_ok=True)
    slots = cpu_slots(parallel) if parallel > 1 else [None]
    free, running, failed = list(range(len(slots))), [], []
    done = len(points) - len(todo)
    try:
        while todo or running:
            while todo and free:
                p, slot = todo.pop(0), free.pop(0)
                running.append(_start(config_spec, p, root, python, slots[slot], slot))
            time.sleep(poll_s)
            for r in [r for r in running if r.proc.poll() is not None]:
                running.remove(r)
                free.append(r.slot)
                r.log.close()
                done += 1
                rc, took = r.proc.returncode, time.time() - r.start
                ok = rc == 0 and results.run_status(root / r.point.name) == results.FINISHED
                if not ok:
                    failed.append(r.point)
                state = ("finished" if ok else
                         f"stopped (preempted, exit {rc}): the next sweep resumes it"
                         if rc == EXIT_PREEMPTED else f"FAILED (exit {rc})")
                echo(f"[{done}/{len(points)}] {r.point.name}: {state} in {_fmt_s(took)}"
                     + ("" if ok else f"; log {root / 'logs' / _log_name(r.point)}"))
    finally:
        for r in running:  # interrupted: stop our children, they resume next time
            r.proc.terminate()
            r.proc.wait()
            r.log.close()
    return failed


def _log_name(p: Point) -> str:
    return p.name.replace("/", ".") + ".log"


def _start(config_spec: str, p: Point, root: Path, python: Sequence[str],
           cpus: list[int] | None, slot: int) -> _Running:
    log = open(root / "logs" / _log_name(p), "a")
    argv = [*python, *point_argv(config_spec, p, root)]
    log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(argv)}\n")
    log.flush()
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus is not None else None
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=point_env(root, cpus), preexec_fn=pin)
    return _Running(p, proc, slot, time.time(), log)
