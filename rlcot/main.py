"""Command line: `python -m rlcot.main {run,eval,compile} --config experiments/NAME.py[:VARIANT] --workdir DIR`.

    run    the study's stages in order into DIR (finished stages skipped, the interrupted one
           resumed; --stage NAME runs only that stage)
    eval   the experiment's evaluation suite on a model of the study (--stage NAME's output,
           else the last stage's when finished, else the initial model)
    export DIR's policy (--stage NAME, default the last stage) as a Hugging Face directory
           --out HF_DIR (config.json, safetensors, tokenizer files); needs no --config
    sweep  every point of the experiment's get_sweep under --root (finished points skipped,
           unfinished ones resumed; --parallel N at once; --dry_run prints the commands)
    table  --root's table.md and table.csv: mean +- s.e. over seeds per arm and metric
    plot   --root's curves.png (seed bands per arm) and bars.png (the table's main metric)
    compile  every RL stage's update step and sampling loop, compiled ahead of time (nothing
           allocated, no --workdir): the memory planner's table beside XLA's memory analysis
           per device, for the local devices or, with --topology v5e-16 / v5p-64 / ..., for a
           TPU slice without any TPU (needs libtpu: pip install 'jax[tpu]')

Any config field can be overridden with --config.KEY=VALUE (e.g. --config.train.steps=20);
unknown keys fail before anything is computed. `run` stops on SIGTERM / SIGINT at the next
step boundary with a checkpoint and exits with status 75 (rlcot.preempt.EXIT_PREEMPTED); the
same command resumes.

Several processes (hosts, or processes on one host): run the same command in each, with
--coordinator_address=HOST:PORT (process 0's address), --num_processes=H and --process_id=P
(or the environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID),
and the same --workdir on a shared file system. On a TPU pod, SLURM or Open MPI, jax finds
these by itself: run the same command on every host.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment file, optionally with a variant: experiments/NAME.py[:VARIANT].",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (created; resumed if present).")
_STAGE = flags.DEFINE_string("stage", None, "run/eval/export: one stage of the study, by name.")
_OUT = flags.DEFINE_string("out", None, "export: the Hugging Face directory to write.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "export: weight dtype (float32, bfloat16).")
_ROOT = flags.DEFINE_string("root", None, "sweep/table/plot: the sweep's directory (one run "
                            "directory per point, plus logs/, table.md, table.csv, *.png).")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "sweep: points run at once (cores split).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "sweep: print one command per point, run none.")
_TOPOLOGY = flags.DEFINE_string("topology", None, "compile: a TPU slice (v5e-16, v5p-64, "
                                "or libtpu's v5e:4x4) to compile for instead of local devices.")
_PLAN_DEVICES = flags.DEFINE_integer("plan_devices", None, "compile: print only the memory "
                                     "planner's table for this many devices (compiles nothing).")
_SHARED_PREFIX = flags.DEFINE_bool("shared_prefix", None, "compile: the KV cache layout, one "
                                   "prompt block per prompt shared by its G samples (default: "
                                   "as the stage's rollout.shared_prefix says).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "run/eval on several processes: "
                                   "HOST:PORT of process 0 (else $JAX_COORDINATOR_ADDRESS).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "run/eval on several processes: "
                                      "how many (else $JAX_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "run/eval on several processes: this "
                                   "one's index, 0 .. num_processes-1 (else $JAX_PROCESS_ID).")

COMMANDS = ("run", "eval", "export", "compile")
SWEEP_COMMANDS = ("sweep", "table", "plot")


def _maybe_init_distributed() -> None:
    """Joins a multi-process run from the flags or the environment (rlcot.distributed), before
    any other jax call: asking jax anything first (even jax.process_count()) starts its backend
    as one process, after which jax.distributed.initialize fails."""
    from rlcot import distributed
    distributed.initialize(distributed.Launch.from_env(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value))


def _quiet_logging() -> None:
    """rlcot's own INFO lines on stderr; orbax/absl chatter only from WARNING up."""
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("rlcot")
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    root.propagate = False


def _sweep_main(command: str) -> int:
    """sweep / table / plot: they need the experiment file and variant (its get_sweep), not
    only the config the flag loaded."""
    if _CONFIG.value is None or _ROOT.value is None:
        raise app.UsageError(f"{command}: --config and --root are required")
    from rlcot.sweep import cli
    spec = config_flags.get_config_filename(flags.FLAGS["config"])
    if command == "sweep":
        return cli.sweep_command(spec, _ROOT.value, parallel=_PARALLEL.value,
                                 dry_run=_DRY_RUN.value)
    return (cli.table_command if command == "table" else cli.plot_command)(spec, _ROOT.value)


def main(argv: list[str]) -> None:
    commands = [a for a in argv[1:] if not a.startswith("-")]
    if len(commands) == 1 and commands[0] in SWEEP_COMMANDS:
        sys.exit(_sweep_main(commands[0]))
    if len(commands) != 1 or commands[0] not in COMMANDS:
        raise app.UsageError(f"give one command of {COMMANDS + SWEEP_COMMANDS}, got {commands}")
    command = commands[0]
    if command == "export":
        if _WORKDIR.value is None or _OUT.value is None:
            raise app.UsageError("export: --workdir and --out are required")
        _quiet_logging()
        from rlcot.export import export
        export(_WORKDIR.value, _OUT.value, stage=_STAGE.value, dtype=_DTYPE.value)
        return
    if command == "compile":
        if _CONFIG.value is None:
            raise app.UsageError("compile: --config is required")
        _quiet_logging()
        from rlcot.aot import compile_study
        compile_study(_CONFIG.value, topology=_TOPOLOGY.value, stage=_STAGE.value,
                      shared_prefix=_SHARED_PREFIX.value, plan_devices=_PLAN_DEVICES.value)
        return
    if _CONFIG.value is None or _WORKDIR.value is None:
        raise app.UsageError("--config and --workdir are required")
    _quiet_logging()
    config, workdir = _CONFIG.value, _WORKDIR.value
    if command == "run":
        from rlcot import preempt
        # rlcot.preempt's handlers from the start (the study's own block inside does nothing
        # more): a SIGTERM while jax starts, loads or compiles is recorded and the study stops
        # before its next stage, on every process, instead of killing this one process.
        with preempt.on_signals():
            _maybe_init_distributed()
            from rlcot.study import run
            try:
                run(config, workdir, only=_STAGE.value)
            except preempt.Preempted:
                sys.exit(preempt.EXIT_PREEMPTED)
    else:
        _maybe_init_distributed()
        from rlcot.evaluation.cli import run_eval
        run_eval(config, workdir, stage=_STAGE.value)


def entry() -> None:
    app.run(main)


if __name__ == "__main__":
    entry()
