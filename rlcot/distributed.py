"""Several processes, one global mesh: joining a multi-process run (jax.distributed), the rows
each process owns, and the moves between a process's host data and global arrays.

Layout. The training batch's N rows are sharded over the batch mesh axes (data, fsdp); process
p of H owns the contiguous block of rows [p·N/H, (p+1)·N/H) (checked by `check_row_blocks`
before anything compiles). The prompt pipeline gives process p the matching block of each
global batch (rlcot.data.pipeline), so the union of the processes' rows, in process order, is
the batch a one-process run sees, row for row. Each process detokenises and scores only its
rows; per-row numbers are then gathered (`gather_rows`) so that every process logs the same
metrics, and only process 0 writes files (`is_primary`). With one process every function here
is the identity or a plain device_put.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any, Callable

import jax
import numpy as np

log = logging.getLogger(__name__)

ENV_ADDRESS, ENV_PROCESSES, ENV_PROCESS_ID = (
    "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
# Cluster environments in which jax.distributed finds the coordinator and the process ids by
# itself (TPU pod workers, SLURM, Open MPI).
CLUSTER_ENV = ("TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE")


@dataclasses.dataclass(frozen=True)
class Launch:
    """How this process joins a run: all None means one process (or the cluster's own
    detection, when CLUSTER_ENV says there is a cluster); a coordinator address alone leaves
    the number of processes and this one's index to that detection."""
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    def __post_init__(self):
        given = [self.num_processes is not None, self.process_id is not None]
        if any(given) and not (all(given) and self.coordinator_address is not None):
            raise ValueError(
                f"a multi-process run needs all of coordinator address, number of processes and "
                f"process id (--coordinator_address, --num_processes, --process_id or "
                f"{ENV_ADDRESS}, {ENV_PROCESSES}, {ENV_PROCESS_ID}); got {self}")
        if self.num_processes is not None:
            if self.num_processes < 1:
                raise ValueError(f"num_processes must be >= 1, got {self.num_processes}")
            if not 0 <= self.process_id < self.num_processes:
                raise ValueError(f"process_id must be in [0, {self.num_processes}), got "
                                 f"{self.process_id}")

    @property
    def explicit(self) -> bool:
        return self.num_processes is not None

    @classmethod
    def from_env(cls, coordinator_address: str | None = None, num_processes: int | None = None,
                 process_id: int | None = None) -> "Launch":
        """Flags first, then the JAX_* environment variables."""
        def env_int(name: str) -> int | None:
            v = os.environ.get(name)
            if v in (None, ""):
                return None
            try:
                return int(v)
            except ValueError:
                raise ValueError(f"{name} must be an integer, got {v!r}") from None
        return cls(coordinator_address or os.environ.get(ENV_ADDRESS) or None,
                   num_processes if num_processes is not None else env_int(ENV_PROCESSES),
                   process_id if process_id is not None else env_int(ENV_PROCESS_ID))


def initialize(launch: Launch, *, timeout_s: int = 300) -> None:
    """Joins this process to a multi-process run; call it before any other jax call (the
    backend must not be initialised yet: jax.devices(), jax.process_count() and any array op
    all initialise it). With an explicit launch of one process, or no launch and no cluster
    environment, nothing is done. CPU processes exchange collectives through gloo, and run
    each computation to its end before the next is dispatched, so that gloo never has two
    computations' collectives in flight at once (a precaution: it did not stop the hangs seen
    with groups split unevenly over the devices; see check_run)."""
    if jax.distributed.is_initialized():
        return
    cluster = any(os.environ.get(k) for k in CLUSTER_ENV) or launch.coordinator_address
    if not launch.explicit and not cluster:
        return
    if launch.explicit and launch.num_processes == 1:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    # jax.distributed otherwise starts its preemption service, whose C++ notifier takes over
    # SIGTERM: a SIGTERM that arrives before rlcot.preempt installs its handlers (loading,
    # compiling) is then only logged ("SIGTERM caught") and the run goes on to its end, as
    # nothing here asks multihost_utils.reached_preemption_sync_point; which handler got a
    # SIGTERM depended on when it came. rlcot.preempt is the one handler: every process
    # records the signal and the loops agree on a stop with stop_requested's all-gather.
    jax.config.update("jax_enable_preemption_service", False)
    if launch.explicit:
        jax.distributed.initialize(launch.coordinator_address, launch.num_processes,
                                   launch.process_id, initialization_timeout=timeout_s)
    else:
        try:
            jax.distributed.initialize(launch.coordinator_address,
                                       initialization_timeout=timeout_s)
        except (RuntimeError, ValueError) as e:  # single-host TPU VMs also set some of these
            log.info("jax.distributed.initialize skipped: %s", e)
            return
    check_process_count(launch.num_processes)
    log.info("process %d of %d; %d local of %d devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())


def check_process_count(expected: int | None) -> None:
    """A launch that named its number of processes must see exactly that many."""
    if expected is not None and jax.process_count() != expected:
        raise ValueError(f"the launch says {expected} processes (--num_processes / "
                         f"{ENV_PROCESSES}) but jax sees {jax.process_count()}: start every "
                         f"process with the same coordinator address and count")


def is_primary() -> bool:
    """Process 0 writes the workdir's files (metrics, summary, tables, plots)."""
    return jax.process_index() == 0


def multi() -> bool:
    return jax.process_count() > 1


def sync(name: str) -> None:
    """Every process waits here until all have arrived (no-op with one process)."""
    if multi():
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def local_block(n: int) -> slice:
    """This process's contiguous block of n rows (n divisible by the process count)."""
    H, p = jax.process_count(), jax.process_index()
    if n % H:
        raise ValueError(f"{n} rows do not split over {H} processes")
    return slice(p * n // H, (p + 1) * n // H)


def check_row_blocks(sharding: jax.sharding.Sharding, n_rows: int) -> None:
    """Each process must hold exactly its block of rows under `sharding` (rows over the batch
    mesh axes): the mesh's devices of a process must be contiguous along those axes. Raises
    naming the layout otherwise (e.g. a mesh whose batch axes interleave the processes)."""
    H = jax.process_count()
    if H == 1:
        return
    held: dict[int, set[int]] = {}
    for device, index in sharding.devices_indices_map((n_rows,)).items():
        rows = range(*index[0].indices(n_rows))
        held.setdefault(device.process_index, set()).update(rows)
    for p in range(H):
        want = set(range(p * n_rows // H, (p + 1) * n_rows // H))
        if held.get(p, set()) != want:
            got = sorted(held.get(p, set()))
            raise ValueError(
                f"process {p} of {H} must hold rows [{min(want)}, {max(want) + 1}) of the "
                f"{n_rows}-row batch but the mesh gives it {len(got)} rows "
                f"({got[:4]}{'...' if len(got) > 4 else ''}); each process's devices must form "
                f"a contiguous block of the batch axes: put the processes on mesh.data "
                f"(mesh.data a multiple of the process count) or on mesh.fsdp with "
                f"mesh.data = 1, and mesh.tensor within one process")


def to_global(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """Global arrays from this process's rows of each leaf (its block, in row order), placed in
    `sharding`; with one process a plain device_put."""
    if not multi():
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
        sharding, np.asarray(x)), tree)


def settle(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """`tree`, finished, on a CPU mesh of several devices; elsewhere `tree` at once.

    XLA:CPU (jaxlib 0.10) can deadlock when programs over several devices are launched back to
    back, and then aborts the process after 40 s ("Termination timeout for `all gather ...`
    exceeded ... only 3 of 4 of them arrived"). Seen under load (2 cores, 8 host devices),
    always right after the RL loop's back-to-back log-prob passes; in gdb, part of one
    program's devices waited in its all-gathers, its other devices' launches waited in
    Semaphore::Acquire, and the main thread waited inside the launch of the next program
    (suspected: per-device launch semaphores taken in different orders by the two launches).
    Waiting for each such program before launching the next costs nothing on CPU, where no
    device queue needs keeping full; GPU and TPU streams order programs themselves."""
    devices = mesh.devices
    if devices.size > 1 and devices.flat[0].platform == "cpu":
        return jax.block_until_ready(tree)
    return tree


def replicated(x: Any, mesh: jax.sharding.Mesh) -> Any:
    """A value that is the same on every process (a random key, a scalar) as a global array
    replicated on the mesh: jit and device_put take only global arrays for a mesh that spans
    processes. With one process, x itself."""
    if not multi():
        return x
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    is_key = jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key)
    data = np.asarray(jax.random.key_data(x) if is_key else x)
    out = jax.make_array_from_callback(data.shape, sharding, lambda index: data[index])
    return jax.random.wrap_key_data(out, impl=jax.random.key_impl(x)) if is_key else out


def gather_rows(x: Any) -> np.ndarray:
    """All processes' blocks of a host array, concatenated in process order (the global rows),
    on every process."""
    x = np.asarray(x)
    if not multi():
        return x
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def gather_array(x: jax.Array) -> np.ndarray:
    """The whole value of a global array on every process, as numpy."""
    if not multi() or x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def local_rows(x: jax.Array, sharding: jax.sharding.Sharding) -> np.ndarray:
    """This process's block of rows of a global array, read from its own devices after moving
    the array into `sharding` (rows over the batch axes; see check_row_blocks)."""
    if not multi():
        return np.asarray(jax.device_get(x))
    x = jax.jit(lambda a: a, out_shardings=sharding)(x)
    block = local_block(x.shape[0])
    parts: dict[int, np.ndarray] = {}
    for shard in x.addressable_shards:  # replicas (e.g. over tensor) hold the same rows
        start = shard.index[0].start or 0
        if start not in parts:
            parts[start] = np.asarray(shard.data)
    starts = sorted(parts)
    out = np.concatenate([parts[s] for s in starts], axis=0)
    if starts[0] != block.start or out.shape[0] != block.stop - block.start:
        raise RuntimeError(f"process {jax.process_index()} holds rows from {starts[0]} "
                           f"({out.shape[0]} rows), expected [{block.start}, {block.stop})")
    return out


def merge_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """One process's reward/rollout counters combined over processes, identical everywhere:
    counts ('n_*', 'groups_*', 'tokens_*') add up, seconds ('*_s') take the slowest process,
    everything else (per-row means over equal blocks) averages."""
    if not multi():
        return dict(metrics)
    keys = sorted(metrics)
    table = gather_rows(np.asarray([[float(metrics[k]) for k in keys]], np.float64))
    out = {}
    for j, k in enumerate(keys):
        leaf = k.rsplit("/", 1)[-1]
        col = table[:, j]
        if leaf.startswith(("n_", "groups_", "tokens_")):
            out[k] = float(col.sum())
        elif leaf.endswith("_s"):
            out[k] = float(col.max())
        else:
            out[k] = float(col.mean())
    return out


def local_generate(generate: Callable, sharding: jax.sharding.NamedSharding,
                   pad_id: int) -> Callable:
    """Sampler.generate for this process's prompts: the processes' prompt blocks are put
    together (token ids only, left-padded to the widest), sampled on the global mesh, and each
    process gets back a SampleOutput of its own rows as host arrays (for detokenising and
    scoring). With one process, `generate` itself."""
    if not multi():
        return generate

    def run(prompt_tokens_BxT, prompt_lens_B, rng, num_samples=1, spec=None):
        from rlcot.sampling import SamplingSpec
        tokens = np.asarray(prompt_tokens_BxT, np.int32)
        width = int(gather_rows(np.asarray([tokens.shape[1]])).max())
        if width > tokens.shape[1]:  # the 1-process batch is padded to its widest prompt
            tokens = np.concatenate([np.full((tokens.shape[0], width - tokens.shape[1]), pad_id,
                                             np.int32), tokens], axis=1)
        all_tokens, all_lens = gather_rows(tokens), gather_rows(prompt_lens_B)
        out = generate(all_tokens, all_lens, replicated(rng, sharding.mesh),
                       num_samples=num_samples,
                       spec=spec if spec is not None else SamplingSpec())
        prompts = local_block(all_tokens.shape[0])
        rows = {f.name: local_rows(getattr(out, f.name), sharding)
                for f in dataclasses.fields(out)
                if f.name.endswith(("_NxT", "_N")) and f.name != "prompt_tokens_BxP"}
        return dataclasses.replace(
            out, **rows, prompt_tokens_BxP=np.asarray(out.prompt_tokens_BxP)[prompts],
            prompt_lens_B=np.asarray(out.prompt_lens_B)[prompts])

    return run


def replicated_generate(generate: Callable, mesh: jax.sharding.Mesh) -> Callable:
    """Sampler.generate for inputs that are the same on every process (evaluation): every
    process gets the whole SampleOutput as host arrays. With one process, `generate`."""
    if not multi():
        return generate

    def run(prompt_tokens_BxT, prompt_lens_B, rng, *args, **kwargs):
        out = generate(prompt_tokens_BxT, prompt_lens_B, replicated(rng, mesh), *args, **kwargs)
        return dataclasses.replace(out, **{
            f.name: gather_array(getattr(out, f.name)) for f in dataclasses.fields(out)
            if isinstance(getattr(out, f.name), jax.Array)})

    return run


# Stage kinds (rlcot.stages) that run correctly with several processes: their drivers load
# per-process blocks, build global arrays, write files on process 0 only and are tested
# against one process (tests/loop/test_multiprocess.py). The other kinds were written for one
# process (e.g. they device_put a whole host batch onto the mesh and every process writes the
# stage's files), so a multi-process study refuses them before anything runs.
MULTI_PROCESS_KINDS = ("rl", "sft", "dpo")


def check_stage_kinds(kinds: dict[str, str]) -> None:
    """With several processes, every stage about to run ({name: kind}) must be of a kind in
    MULTI_PROCESS_KINDS; raises naming the others (no-op with one process)."""
    H = jax.process_count()
    if H == 1:
        return
    bad = {name: kind for name, kind in kinds.items() if kind not in MULTI_PROCESS_KINDS}
    if bad:
        listed = ", ".join(f"{name!r} ({kind})" for name, kind in bad.items())
        raise ValueError(
            f"stage(s) {listed}: stage kind(s) {sorted(set(bad.values()))} do not run across "
            f"{H} processes yet; only {list(MULTI_PROCESS_KINDS)} stages do. Run these stages "
            f"as one process (one host: all its devices; --stage NAME runs one stage), then the "
            f"multi-process stages with --stage")


def check_run(mesh: jax.sharding.Mesh, rows: jax.sharding.Sharding, *, batch_prompts: int,
              num_samples: int, dynamic_sampling: bool, model_rewards: tuple[str, ...]) -> None:
    """What a multi-process RL run needs, checked before anything compiles: the global batch
    splits over the processes in blocks that their devices hold, and no feature that cannot
    work across processes yet is on."""
    H = jax.process_count()
    if H == 1:
        return
    if batch_prompts % H:
        raise ValueError(f"data.batch_prompts = {batch_prompts} does not split over {H} "
                         f"processes: each loads an equal block of the prompts; use a multiple "
                         f"of {H}")
    if dynamic_sampling:
        raise ValueError(f"rollout.dynamic_sampling is not supported with {H} processes yet (its "
                         f"extra rounds would move kept groups between processes): set "
                         f"rollout.dynamic_sampling=False or run one process")
    if model_rewards:
        raise ValueError(f"rewards {list(model_rewards)} score with a model (reward model or "
                         f"judge), which is not supported with {H} processes yet: each process "
                         f"scores only its rows on the host; run one process")
    check_row_blocks(rows, batch_prompts * num_samples)
    shards = math.prod(mesh.shape[a] for a in ("data", "fsdp"))
    if mesh.devices.flat[0].platform == "cpu" and batch_prompts % shards:
        log.warning(
            "data.batch_prompts = %d is not a multiple of the %d batch shards (mesh.data x "
            "mesh.fsdp): the groups of samples are split unevenly over the devices, which needs "
            "collectives over sub-groups of devices; on CPU processes (gloo) such runs have hung "
            "in the advantages' collectives (3 of 15 runs). Use a multiple of %d.",
            batch_prompts, shards, shards)
    log.info("%d processes: each samples and scores %d prompts x %d samples of the global "
             "batch on mesh %s", H, batch_prompts // H, num_samples, dict(mesh.shape))
