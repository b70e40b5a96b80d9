"""Runs untrusted Python programs with hard limits; what is enforced depends on the OS (below).

Always (any Linux/POSIX host):
  - own session and process group; wall-clock timeout, after which the whole group gets SIGKILL;
  - RLIMIT_CPU, RLIMIT_AS (memory), RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE=0 in the program;
  - a fresh temporary working directory (removed afterwards), a scrubbed environment (only
    PATH, LANG, HOME, TMPDIR, PYTHONHASHSEED=0, ...), no user site-packages (`python -s -S`);
  - output capped at `output_bytes`: the parent reads at most that much, then kills the program;
  - PR_SET_PDEATHSIG: if the process that started the sandbox dies, the sandbox dies too.
As root (the CI case) additionally:
  - the program runs as an unprivileged uid of its own (one per run, from a range of 65536
    starting at `uid_base`), so it cannot raise its limits again, signal or read
    (/proc/PID/environ) other processes, or write root's files;
  - RLIMIT_NPROC (counted per uid, hence the uid per run: one run's fork bomb cannot use up
    another run's process budget; root would ignore it);
  - if `unshare` is permitted: new PID, mount, network, IPC and UTS namespaces. The program is
    PID 2 under a tiny init; when init exits or is killed every process in the namespace dies
    (fork bombs and daemonised children included). Only loopback exists, and it is down: no
    network at all. /tmp, /var/tmp and /dev/shm are fresh size-capped tmpfs mounts and /proc
    is remounted, so other processes are invisible and scratch files vanish with the sandbox;
  - if cgroup v1 `pids` / `memory` hierarchies are writable: one cgroup per run caps the total
    number of processes (`max_processes`) and the total memory of the whole sandbox.
As non-root: a user namespace (when the kernel allows unprivileged ones) gives the same
namespaces, without the uid switch and without cgroups; RLIMIT_NPROC is set to the user's current
process count plus `max_processes`. With no namespaces at all there is no network or filesystem
isolation: only the limits and the process-group kill remain, and `capabilities()` says so.

Not a security boundary against kernel exploits; it contains the mistakes and reward hacks of a
policy model (infinite loops, fork/memory bombs, stray writes, huge prints, killing its parent).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid

_LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_init.py")
_SETUP_ERROR = b"rlcot-sandbox-setup-error:"
_CGROUP_V1 = "/sys/fs/cgroup"


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the program inside it)."""


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    wall_s: float = 5.0
    cpu_s: float = 5.0
    memory_bytes: int = 1 << 30
    file_bytes: int = 16 << 20
    max_processes: int = 32
    max_open_files: int = 64
    output_bytes: int = 1 << 20
    tmpfs_bytes: int = 64 << 20
    uid_base: int = 200_000  # as root, each run gets a fresh uid in [uid_base, uid_base + 65536)
    # True puts this environment's site-packages on PYTHONPATH (plain packages only: .pth files
    # and editable installs are not processed). False: standard library only, faster start.
    site_packages: bool = False

    def __post_init__(self):
        for name in ("wall_s", "cpu_s", "memory_bytes", "file_bytes", "max_processes",
                     "max_open_files", "output_bytes", "tmpfs_bytes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxLimits.{name} must be > 0, got {getattr(self, name)!r}")
        if not 1000 <= self.uid_base <= 2**31 - 65536:
            raise ValueError(f"SandboxLimits.uid_base={self.uid_base} must be in [1000, 2^31 - 65536]")
        if self.memory_bytes < 64 << 20:
            raise ValueError(f"memory_bytes={self.memory_bytes} is too small for Python (>= 64 MiB)")


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    returncode: int | None  # launcher exit code; 128+N when killed by signal N
    output: bytes  # stdout and stderr interleaved, at most output_bytes
    timed_out: bool
    output_truncated: bool
    wall_s: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.output_truncated


@dataclasses.dataclass(frozen=True)
class Capabilities:
    root: bool
    namespaces: bool  # PID + mount + network + IPC + UTS
    user_namespace: bool  # namespaces obtained through an unprivileged user namespace
    uid_switch: bool
    cgroups: tuple[str, ...]  # cgroup v1 controllers used: 'pids', 'memory'

    def describe(self) -> str:
        parts = ["process-group kill", "rlimits", "scrubbed env", "temp workdir", "output cap"]
        if self.uid_switch:
            parts.append("unprivileged uid + RLIMIT_NPROC")
        if self.namespaces:
            parts.append("PID/mount/net/IPC/UTS namespaces (no network, private /tmp, /proc)")
            if self.user_namespace:
                parts.append("via user namespace")
        parts += [f"cgroup {c}" for c in self.cgroups]
        return ", ".join(parts)


def _env(workdir: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "HOME": workdir, "TMPDIR": workdir, "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8"}


def _python_paths(site_packages: bool) -> dict[str, str | None]:
    """The real interpreter (not a venv symlink) and its prefix; site-packages if wanted."""
    python = os.path.realpath(sys.executable)
    prefix = os.path.realpath(sys.base_prefix)
    if os.path.commonpath([python, prefix]) != prefix:
        raise SandboxError(f"interpreter {python} is not under its prefix {prefix}")
    site_dir = sysconfig.get_paths()["purelib"] if site_packages else None
    return {"python": python, "python_prefix": prefix, "site_dir": site_dir}


_RUN_COUNTER = itertools.count()


def _fresh_uid(base: int) -> int:
    """Distinct for concurrent runs: pool workers have distinct pids, and one process's
    consecutive (or threaded) runs take successive slots."""
    return base + ((os.getpid() % 4096) * 16 + next(_RUN_COUNTER) % 16)


def _user_nproc(uid: int) -> int:
    n = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                n += os.stat(f"/proc/{entry}").st_uid == uid
            except OSError:
                pass
    return n


def _make_cgroups(limits: SandboxLimits, controllers: tuple[str, ...]) -> list[str]:
    paths = []
    for c in controllers:
        path = os.path.join(_CGROUP_V1, c, f"rlcot-sbx-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        os.mkdir(path)
        paths.append(path)
        key, value = (("pids.max", limits.max_processes + 2) if c == "pids"
                      else ("memory.limit_in_bytes", limits.memory_bytes))
        with open(os.path.join(path, key), "w") as f:
            f.write(str(value))
    return paths


def _remove_cgroups(paths: list[str]) -> None:
    for path in paths:
        for _ in range(50):  # processes may take a moment to leave after SIGKILL
            try:
                with open(os.path.join(path, "cgroup.procs")) as f:
                    for pid in f.read().split():
                        try:
                            os.kill(int(pid), signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.01)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _run(files: dict[str, str | bytes], program: str, limits: SandboxLimits,
         caps: Capabilities) -> SandboxResult:
    root = tempfile.mkdtemp(prefix="rlcot-sbx-")
    workdir = os.path.join(root, "work")
    cgroups: list[str] = []
    proc = None
    t0 = time.monotonic()
    try:
        os.mkdir(workdir, 0o700)
        for name, data in files.items():
            with open(os.path.join(workdir, name), "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
        uid = _fresh_uid(limits.uid_base) if caps.uid_switch else None
        if uid is not None and not caps.namespaces:
            os.chmod(root, 0o711)
            for name in [*files, ""]:
                os.chown(os.path.join(workdir, name), uid, uid)
        nproc = (limits.max_processes if caps.uid_switch
                 else None if caps.root else _user_nproc(os.getuid()) + limits.max_processes)
        cgroups = _make_cgroups(limits, caps.cgroups)
        cfg = {
            "parent_pid": os.getpid(), "input_dir": workdir, "program": program,
            "namespaces": caps.namespaces, "user_namespace": caps.user_namespace,
            "uid": uid, "nproc": nproc, "cgroups": cgroups, "tmpfs_bytes": limits.tmpfs_bytes,
            "env": _env(workdir), **_python_paths(limits.site_packages),
            "limits": {"cpu_s": max(1, math.ceil(limits.cpu_s)),
                       "memory_bytes": limits.memory_bytes, "file_bytes": limits.file_bytes,
                       "max_open_files": limits.max_open_files},
        }
        # A per-item SIGALRM (pool worker) landing inside Popen could leave a started sandbox
        # that nobody times: hold it until `proc` exists and the finally below can kill it.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        try:
            proc = subprocess.Popen(
                [sys.executable, "-s", "-S", "-B", _LAUNCHER, json.dumps(cfg)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                env=_env(workdir), cwd=workdir, start_new_session=True, close_fds=True)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        output, timed_out, truncated = _read_capped(proc, t0 + limits.wall_s, limits.output_bytes)
        _kill_group(proc.pid)  # leftovers outside a PID namespace, and anything on the cap/timeout
        returncode = proc.wait()
        returncode = 128 - returncode if returncode < 0 else returncode
    finally:
        if proc is not None and proc.returncode is None:
            _kill_group(proc.pid)  # interrupted (e.g. by the pool's per-item timer)
            proc.wait()
        if proc is not None:
            proc.stdout.close()
        _remove_cgroups(cgroups)
        shutil.rmtree(root, ignore_errors=True)
    if returncode == 125 and output.startswith(_SETUP_ERROR):
        raise SandboxError(output.decode(errors="replace").strip())
    return SandboxResult(returncode, output, timed_out, truncated, time.monotonic() - t0)


def _read_capped(proc: subprocess.Popen, deadline: float, cap: int) -> tuple[bytes, bool, bool]:
    """Reads stdout until EOF, the deadline or `cap` bytes, whichever comes first."""
    fd = proc.stdout.fileno()
    poller = select.poll()  # not select(): a big trainer may hold fds above FD_SETSIZE
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    chunks, n = [], 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return b"".join(chunks), True, False
        # Wake up now and then: the program may exit while a daemonised child holds the pipe.
        ready = poller.poll(min(remaining, 0.25) * 1000)
        if not ready:
            if proc.poll() is not None:
                return b"".join(chunks), False, False
            continue
        data = os.read(fd, min(1 << 16, cap + 1 - n))
        if not data:
            return b"".join(chunks), False, False
        chunks.append(data)
        n += len(data)
        if n > cap:
            return b"".join(chunks)[:cap], False, True


def run_python(files: dict[str, str | bytes], program: str = "main.py",
               limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Writes `files` into a fresh working directory and runs `python program` there."""
    if program not in files:
        raise ValueError(f"program {program!r} is not among the files {sorted(files)}")
    for name in files:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"sandbox file names must be plain names, got {name!r}")
    return _run(files, program, limits, capabilities())


def _probe(caps: Capabilities) -> bool:
    try:
        res = _run({"main.py": "print('ok')"}, "main.py", SandboxLimits(wall_s=10.0), caps)
    except (SandboxError, OSError):
        return False
    return res.ok and res.output.strip() == b"ok"


def _sweep_stale_cgroups(controllers: tuple[str, ...]) -> None:
    """Removes the cgroups of runs whose process died mid-run (a pool worker killed at its hard
    deadline never reaches its clean-up). Only dead creators' groups: live ones are in use."""
    for c in controllers:
        root = os.path.join(_CGROUP_V1, c)
        for name in os.listdir(root):
            parts = name.split("-")
            if name.startswith("rlcot-sbx-") and len(parts) == 4 and parts[2].isdigit() \
                    and not os.path.exists(f"/proc/{parts[2]}"):
                _remove_cgroups([os.path.join(root, name)])


def _writable_cgroups() -> tuple[str, ...]:
    found = []
    for c in ("pids", "memory"):
        probe = os.path.join(_CGROUP_V1, c, f"rlcot-sbx-probe-{os.getpid()}")
        try:
            os.mkdir(probe)
            os.rmdir(probe)
            found.append(c)
        except OSError:
            pass
    return tuple(found)


@functools.lru_cache(maxsize=1)
def capabilities() -> Capabilities:
    """Strongest isolation that works on this host, found once per process by trial runs.

    RLCOT_SANDBOX_ISOLATION=none forces the weakest mode (debugging, or a host that is itself
    a disposable sandbox). As root, finding no isolation at all raises SandboxError.
    """
    root = os.geteuid() == 0
    plain = Capabilities(root, False, False, False, ())
    if os.environ.get("RLCOT_SANDBOX_ISOLATION") == "none" or not sys.platform.startswith("linux"):
        return plain
    if not root:
        userns = Capabilities(False, True, True, False, ())
        return userns if _probe(userns) else plain
    cgroups = _writable_cgroups()
    _sweep_stale_cgroups(cgroups)
    for namespaces, uid_switch in ((True, True), (False, True), (True, False)):
        for cg in ((cgroups, ()) if cgroups else ((),)):
            caps = Capabilities(True, namespaces, False, uid_switch, cg)
            if _probe(caps):
                return caps
    caps = Capabilities(True, False, False, False, cgroups)
    if cgroups and _probe(caps):
        return caps
    # Root with no isolation at all: a program's os.kill(-1, 9) would kill the whole machine.
    raise SandboxError("sandbox: running as root but neither namespaces, an unprivileged uid "
                       "nor cgroups work here; set RLCOT_SANDBOX_ISOLATION=none to run "
                       "untrusted code without isolation anyway")
