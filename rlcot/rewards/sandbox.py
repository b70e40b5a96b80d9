"""Runs untrusted Python programs isolated and limited; refuses when the isolation asked for is missing.

Isolation levels (`isolation=`, weakest allowed; a run always uses everything that works here):
  - "full" (the default): PID, mount, network, IPC and UTS namespaces; an unprivileged identity
    (as root a fresh uid per run, as non-root a user namespace); no-new-privileges; cgroup
    memory and pids limits on the whole sandbox (cgroup v2 where this process's cgroup has the
    memory and pids controllers delegated, else writable cgroup v1 hierarchies).
  - "namespaces": the same without the cgroup limits (per-process rlimits only).
  - "none": no isolation is required: only the limits below. The program may see and signal
    your processes, read your files and use the network.
When the level asked for is unavailable, `run_python` / `Session` raise SandboxUnavailable naming
what is missing, and nothing runs. A level below "full" must be chosen explicitly (the argument,
or RLCOT_SANDBOX_ISOLATION=<level> as the default), and is logged with a warning on every run.

Always, at every level:
  - own session and process group; wall-clock timeout, then SIGKILL to the group and the cgroup;
  - RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE=0 (and RLIMIT_NPROC);
  - prctl(PR_SET_NO_NEW_PRIVS): no setuid binary or file capability can raise its privileges;
  - a fresh temporary working directory, a scrubbed environment, `python -s -S -B`;
  - output capped at `output_bytes`; PR_SET_PDEATHSIG: if the caller dies, the sandbox dies;
  - only stdin, stdout and stderr are open in the program; no secret of the caller is passed.
Processes that detach (setsid, double fork) die with the run: with namespaces the program runs
under an init of its own PID namespace, and every process in it dies when that init does; with
cgroups the whole cgroup is killed (cgroup.kill on v2, a kill loop on v1); without either, the
launcher is a child subreaper and kills every descendant it inherited. The network is off (a new
network namespace with only loopback, down) unless `SandboxLimits(network=True)`.

Not a security boundary against kernel exploits; it contains the mistakes and reward hacks of a
policy model (infinite loops, fork/memory bombs, stray writes, huge prints, killing its parent).
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import functools
import itertools
import json
import logging
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
from typing import Mapping

log = logging.getLogger(__name__)

_LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_init.py")
_SETUP_ERROR = b"rlcot-sandbox-setup-error:"
# Lines a program writes that start with this are frames (Session(frames=True)); no secret.
FRAME_MARKER = b"\x1erlcot-frame\x1f"

ISOLATION_LEVELS = ("full", "namespaces", "none")
_LEVEL_NEEDS = {"full": ("namespaces", "unprivileged", "no_new_privs", "cgroup_limits"),
                "namespaces": ("namespaces", "unprivileged", "no_new_privs"),
                "none": ()}
FEATURES = {
    "namespaces": "PID/mount/network/IPC/UTS namespaces (root, or unprivileged user namespaces)",
    "unprivileged": "an unprivileged identity (as root a fresh uid per run; as non-root a user "
                    "namespace)",
    "no_new_privs": "prctl(PR_SET_NO_NEW_PRIVS)",
    "cgroup_limits": "cgroup memory and pids limits (cgroup v2 with memory and pids enabled in "
                     "this process's cgroup subtree_control, or writable cgroup v1 memory and "
                     "pids hierarchies)",
}
ENV_ISOLATION = "RLCOT_SANDBOX_ISOLATION"


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the program inside it)."""


class SandboxUnavailable(SandboxError):
    """The isolation asked for does not work on this host: nothing was run."""


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
    network: bool = False  # True: no network namespace (the host's network is reachable)

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
    output: bytes  # stdout and stderr interleaved (frames removed), at most output_bytes
    timed_out: bool
    output_truncated: bool
    wall_s: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.output_truncated


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What works on this host (found by trial runs); a run uses all of it."""

    root: bool
    namespaces: bool  # PID + mount + network + IPC + UTS
    user_namespace: bool  # namespaces obtained through an unprivileged user namespace
    uid_switch: bool
    no_new_privs: bool
    cgroup: str | None = None  # 'v2' or 'v1': memory and pids limits on the whole sandbox
    cgroup_kill: bool = False  # a v2 cgroup.kill kills the whole run (pure v2 or hybrid)
    missing: Mapping[str, str] = dataclasses.field(default_factory=dict)  # feature -> why

    @property
    def features(self) -> frozenset[str]:
        have = {"namespaces": self.namespaces,
                "unprivileged": self.uid_switch or self.user_namespace,
                "no_new_privs": self.no_new_privs, "cgroup_limits": self.cgroup is not None}
        return frozenset(k for k, v in have.items() if v)

    @property
    def level(self) -> str:
        """The strongest isolation level this host provides."""
        return next(lvl for lvl in ISOLATION_LEVELS if set(_LEVEL_NEEDS[lvl]) <= self.features)

    def lacking(self, level: str) -> list[str]:
        return [f for f in _LEVEL_NEEDS[level] if f not in self.features]

    def describe(self) -> str:
        parts = ["process-group kill", "rlimits", "scrubbed env", "temp workdir", "output cap"]
        if self.no_new_privs:
            parts.append("no-new-privileges")
        if self.uid_switch:
            parts.append("unprivileged uid + RLIMIT_NPROC")
        if self.namespaces:
            parts.append("PID/mount/net/IPC/UTS namespaces (no network, private /tmp, /proc)")
            if self.user_namespace:
                parts.append("via user namespace")
        if self.cgroup:
            parts.append(f"cgroup {self.cgroup} memory + pids limits")
        if self.cgroup_kill:
            parts.append("cgroup.kill")
        return f"level {self.level!r}: " + ", ".join(parts)


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


# ---------------------------------------------------------------------------------- cgroups

@dataclasses.dataclass(frozen=True)
class _CgroupPlan:
    """Where this process may create per-run cgroups: (kind, parent directory) pairs, kind
    'v2' (limits + kill), 'memory' / 'pids' (v1 limits) or 'kill' (a v2 group only for
    cgroup.kill, on hybrid hosts)."""

    version: str | None
    dirs: tuple[tuple[str, str], ...]


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, value) -> None:
    with open(path, "w") as f:
        f.write(str(value))


def _own_cgroups() -> dict[str, str]:
    own = {}
    for line in _read("/proc/self/cgroup").splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            own[c] = path
    return own


def _cgroup_mounts() -> tuple[str | None, dict[str, str]]:
    """The cgroup2 mount point and the v1 mount point of each controller."""
    v2, v1 = None, {}
    for line in _read("/proc/self/mountinfo").splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        if rfields[0] == "cgroup2" and v2 is None:
            v2 = fields[4]
        elif rfields[0] == "cgroup":
            for opt in rfields[2].split(","):
                v1.setdefault(opt, fields[4])
    return v2, v1


def _try_child(parent: str, files: dict[str, object]) -> str | None:
    """Creates and removes a test cgroup under `parent` writing `files`; None or why not."""
    probe = os.path.join(parent, f"rlcot-sbx-probe-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    try:
        os.mkdir(probe)
    except OSError as e:
        return f"cannot create a cgroup in {parent}: {e.strerror}"
    try:
        for name, value in files.items():
            _write(os.path.join(probe, name), value)
        return None
    except OSError as e:
        return f"cannot write {name} in a cgroup under {parent}: {e.strerror}"
    finally:
        try:
            os.rmdir(probe)
        except OSError:
            pass


@functools.lru_cache(maxsize=1)
def _cgroup_plan() -> tuple[_CgroupPlan, str]:
    """Finds where per-run cgroups with memory and pids limits can be made; (plan, why not)."""
    try:
        v2_mount, v1_mounts = _cgroup_mounts()
        own = _own_cgroups()
    except OSError as e:
        return _CgroupPlan(None, ()), f"cannot read /proc/self/cgroup or mountinfo: {e}"
    reasons, kill_dir = [], None
    if v2_mount and "" in own:
        base = os.path.join(v2_mount, own[""].lstrip("/"))
        try:
            enabled = _read(os.path.join(base, "cgroup.subtree_control")).split()
            available = _read(os.path.join(base, "cgroup.controllers")).split()
        except OSError as e:
            enabled, available = [], []
            reasons.append(f"cgroup v2 at {base} unreadable: {e.strerror}")
        missing = [c for c in ("memory", "pids") if c not in enabled]
        if missing and all(c in available for c in missing):
            try:
                _write(os.path.join(base, "cgroup.subtree_control"),
                       " ".join(f"+{c}" for c in missing))
                missing = []
            except OSError as e:
                reasons.append(f"cgroup v2: enabling {missing} in {base}/cgroup.subtree_control "
                               f"failed ({e.strerror}); run in a cgroup with a delegated "
                               f"subtree")
        elif missing:
            reasons.append(f"cgroup v2 at {base} has no {missing} controller (controllers: "
                           f"{available or 'none'})")
        if not missing:
            why = _try_child(base, {"memory.max": 1 << 30, "pids.max": 64})
            if why is None:
                return _CgroupPlan("v2", (("v2", base),)), ""
            reasons.append(why)
        elif _try_child(base, {}) is None:
            kill_dir = base  # hybrid: v2 only to kill the whole run
    dirs = []
    for c, key in (("memory", "memory.limit_in_bytes"), ("pids", "pids.max")):
        if c not in v1_mounts or c not in own:
            reasons.append(f"no cgroup v1 {c} hierarchy")
            break
        base = os.path.join(v1_mounts[c], own[c].lstrip("/"))
        why = _try_child(base, {key: 1 << 30 if c == "memory" else 64})
        if why:
            reasons.append(f"cgroup v1 {c}: {why}")
            break
        dirs.append((c, base))
    else:
        if kill_dir:
            dirs.append(("kill", kill_dir))
        return _CgroupPlan("v1", tuple(dirs)), ""
    return _CgroupPlan(None, (("kill", kill_dir),) if kill_dir else ()), "; ".join(reasons)


def _make_cgroups(limits: SandboxLimits, plan: _CgroupPlan) -> list[tuple[str, str]]:
    made = []
    try:
        for kind, parent in plan.dirs:
            path = os.path.join(parent, f"rlcot-sbx-{os.getpid()}-{uuid.uuid4().hex[:12]}")
            os.mkdir(path)
            made.append((kind, path))
            # The launcher, an init and the program come on top of the program's processes.
            if kind == "v2":
                _write(os.path.join(path, "memory.max"), limits.memory_bytes)
                if os.path.exists(os.path.join(path, "memory.swap.max")):
                    _write(os.path.join(path, "memory.swap.max"), 0)
                _write(os.path.join(path, "pids.max"), limits.max_processes + 3)
            elif kind == "memory":
                _write(os.path.join(path, "memory.limit_in_bytes"), limits.memory_bytes)
                try:  # no swap either, where swap accounting exists
                    _write(os.path.join(path, "memory.memsw.limit_in_bytes"), limits.memory_bytes)
                except OSError:
                    pass
            elif kind == "pids":
                _write(os.path.join(path, "pids.max"), limits.max_processes + 3)
    except OSError:
        _remove_cgroups(made)
        raise
    return made


def _kill_cgroup(kind: str, path: str) -> None:
    if kind in ("v2", "kill") and os.path.exists(os.path.join(path, "cgroup.kill")):
        try:
            _write(os.path.join(path, "cgroup.kill"), 1)
            return
        except OSError:
            pass
    try:
        for pid in _read(os.path.join(path, "cgroup.procs")).split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    except OSError:
        pass


def _remove_cgroups(made: list[tuple[str, str]]) -> None:
    for kind, path in made:
        for _ in range(200):  # processes may take a moment to leave after SIGKILL
            _kill_cgroup(kind, path)
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno != errno.EBUSY:
                    break
                time.sleep(0.01)


def _sweep_stale_cgroups(plan: _CgroupPlan) -> None:
    """Removes the cgroups of runs whose process died mid-run (a pool worker killed at its hard
    deadline never reaches its clean-up). Only dead creators' groups: live ones are in use."""
    for kind, parent in plan.dirs:
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        for name in names:
            parts = name.split("-")
            if name.startswith("rlcot-sbx-") and len(parts) >= 4 and parts[2].isdigit() \
                    and not os.path.exists(f"/proc/{parts[2]}"):
                _remove_cgroups([(kind, os.path.join(parent, name))])


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ---------------------------------------------------------------------------------- sessions

class Session:
    """One sandboxed program that the caller can talk to: `send` writes to its stdin, `frame`
    returns the next line it wrote that starts with FRAME_MARKER (frames=True). Everything else
    it writes is kept as `output` (capped). `close` kills the whole sandbox and returns the
    SandboxResult. The caller decides what the program's behaviour means; nothing of the
    caller's (memory, file descriptors, secrets) is reachable from inside."""

    def __init__(self, files: Mapping[str, str | bytes], program: str,
                 limits: SandboxLimits = SandboxLimits(), *, isolation: str | None = None,
                 frames: bool = True, caps: Capabilities | None = None):
        if program not in files:
            raise ValueError(f"program {program!r} is not among the files {sorted(files)}")
        for name in files:
            if not name or "/" in name or name.startswith("."):
                raise ValueError(f"sandbox file names must be plain names, got {name!r}")
        caps = caps if caps is not None else require_isolation(isolation)
        self.limits, self.caps, self._frames_on = limits, caps, frames
        self.t0 = time.monotonic()
        self.deadline = self.t0 + limits.wall_s
        self._root = tempfile.mkdtemp(prefix="rlcot-sbx-")
        self._cgroups: list[tuple[str, str]] = []
        self._proc: subprocess.Popen | None = None
        self._buf = b""
        self._chunks: list[bytes] = []
        self._n_out = 0
        self._frames: collections.deque[bytes] = collections.deque()
        self._pending = b""
        self._eof = False
        self.timed_out = False
        self.truncated = False
        self._result: SandboxResult | None = None
        try:
            self._start(dict(files), program)
        except BaseException:
            self.close()
            raise

    def _start(self, files: dict, program: str) -> None:
        limits, caps = self.limits, self.caps
        workdir = os.path.join(self._root, "work")
        os.mkdir(workdir, 0o700)
        for name, data in files.items():
            with open(os.path.join(workdir, name), "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
        uid = _fresh_uid(limits.uid_base) if caps.uid_switch else None
        if uid is not None and not caps.namespaces:
            os.chmod(self._root, 0o711)
            for name in [*files, ""]:
                os.chown(os.path.join(workdir, name), uid, uid)
        nproc = (limits.max_processes if caps.uid_switch
                 else None if caps.root else _user_nproc(os.getuid()) + limits.max_processes)
        if caps.cgroup or caps.cgroup_kill:
            self._cgroups = _make_cgroups(limits, _cgroup_plan()[0])
        cfg = {
            "parent_pid": os.getpid(), "input_dir": workdir, "program": program,
            "namespaces": caps.namespaces, "user_namespace": caps.user_namespace,
            "network": limits.network, "uid": uid, "nproc": nproc,
            "cgroups": [p for _, p in self._cgroups], "tmpfs_bytes": limits.tmpfs_bytes,
            "env": _env(workdir), **_python_paths(limits.site_packages),
            "limits": {"cpu_s": max(1, math.ceil(limits.cpu_s)),
                       "memory_bytes": limits.memory_bytes, "file_bytes": limits.file_bytes,
                       "max_open_files": limits.max_open_files},
        }
        # A per-item SIGALRM (pool worker) landing inside Popen could leave a started sandbox
        # that nobody times: hold it until `_proc` exists and close() can kill it.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-s", "-S", "-B", _LAUNCHER, json.dumps(cfg)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                env=_env(workdir), cwd=workdir, start_new_session=True, close_fds=True)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        os.set_blocking(self._proc.stdin.fileno(), False)
        self._poller = select.poll()  # not select(): a trainer may hold fds above FD_SETSIZE
        self._poller.register(self._proc.stdout.fileno(), select.POLLIN | select.POLLHUP)

    @property
    def alive(self) -> bool:
        return not (self._eof or self.timed_out or self.truncated)

    def _take(self, data: bytes) -> None:
        self._n_out += len(data)
        if self._n_out > self.limits.output_bytes:
            data = data[:len(data) - (self._n_out - self.limits.output_bytes)]
            self.truncated = True
        if not self._frames_on:
            self._chunks.append(data)
            return
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            if line.startswith(FRAME_MARKER):
                self._frames.append(line[len(FRAME_MARKER):])
            elif line:
                self._chunks.append(line + b"\n")

    def _pump(self, want_frame: bool) -> None:
        """Moves data both ways until a frame is there (want_frame), or EOF, the deadline, the
        output cap; without want_frame, until the pending input is written."""
        out_fd = self._proc.stdout.fileno()
        while self.alive and not (want_frame and self._frames) \
                and (want_frame or self._pending):
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                self.timed_out = True
                return
            if self._pending:
                try:
                    n = os.write(self._proc.stdin.fileno(), self._pending)
                    self._pending = self._pending[n:]
                except BlockingIOError:
                    pass
                except (BrokenPipeError, OSError):
                    self._pending = b""  # the program closed its stdin or died
                    if not want_frame:
                        return
            ready = self._poller.poll(min(remaining, 0.002 if self._pending else 0.25) * 1000)
            if not ready:
                # Wake up now and then: the program may exit while a detached child holds the pipe.
                if self._proc.poll() is not None:
                    self._drain(out_fd)
                    self._eof = True
                continue
            data = os.read(out_fd, 1 << 16)
            if not data:
                self._eof = True
            else:
                self._take(data)

    def _drain(self, fd: int) -> None:
        while self._poller.poll(0) and not self.truncated:
            data = os.read(fd, 1 << 16)
            if not data:
                return
            self._take(data)

    def send(self, data: bytes) -> bool:
        """Queues `data` for the program's stdin and writes what the pipe takes before the
        deadline; False when the program is gone (or out of time)."""
        if not self.alive:
            return False
        self._pending += data
        self._pump(want_frame=False)
        return self.alive

    def frame(self) -> bytes | None:
        """The next frame, or None if the program ended, ran out of time or output first."""
        if not self._frames:
            self._pump(want_frame=True)
        return self._frames.popleft() if self._frames else None

    def wait(self) -> None:
        """Closes the program's stdin and waits for its end (EOF), the deadline or the cap."""
        if self._proc is not None and not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
        while self.alive:
            self._pump(want_frame=True)
            self._frames.clear()

    @property
    def output(self) -> bytes:
        return b"".join(self._chunks)

    def close(self) -> SandboxResult:
        """Kills everything the program started and removes its files; idempotent."""
        if self._result is not None:
            return self._result
        proc, returncode = self._proc, None
        try:
            if proc is not None:
                if not self.caps.namespaces and proc.poll() is None:
                    # The launcher (a subreaper) kills its inherited descendants on SIGTERM.
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(0.5)
                    except subprocess.TimeoutExpired:
                        pass
                _kill_group(proc.pid)
                for kind, path in self._cgroups:
                    _kill_cgroup(kind, path)
                returncode = proc.wait()
                returncode = 128 - returncode if returncode < 0 else returncode
        finally:
            if proc is not None:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                for f in (proc.stdin, proc.stdout):
                    try:
                        f.close()
                    except OSError:
                        pass
            _remove_cgroups(self._cgroups)
            shutil.rmtree(self._root, ignore_errors=True)
        output = self.output
        if self._frames_on and self._buf and not self._buf.startswith(FRAME_MARKER):
            output += self._buf
        self._result = SandboxResult(returncode, output, self.timed_out, self.truncated,
                                     time.monotonic() - self.t0)
        if returncode == 125 and output.startswith(_SETUP_ERROR):
            raise SandboxError(output.decode(errors="replace").strip())
        return self._result

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.close()
        except SandboxError:
            if exc[0] is None:
                raise


def run_python(files: Mapping[str, str | bytes], program: str = "main.py",
               limits: SandboxLimits = SandboxLimits(), *,
               isolation: str | None = None) -> SandboxResult:
    """Writes `files` into a fresh working directory and runs `python program` there (stdin
    closed). Raises SandboxUnavailable, running nothing, when `isolation` is unavailable."""
    level = resolve_level(isolation)
    caps = require_isolation(level)
    warn_if_weaker(level, caps, "run_python")
    session = Session(files, program, limits, frames=False, caps=caps)
    try:
        session.wait()
    finally:
        result = session.close()
    return result


# ---------------------------------------------------------------------------------- levels

def resolve_level(isolation: str | None) -> str:
    """The level asked for: the argument, else $RLCOT_SANDBOX_ISOLATION, else 'full'."""
    level = isolation if isolation is not None else os.environ.get(ENV_ISOLATION) or "full"
    if level not in ISOLATION_LEVELS:
        src = "isolation" if isolation is not None else f"${ENV_ISOLATION}"
        raise ValueError(f"sandbox: {src}={level!r} is not an isolation level; "
                         f"choose one of {ISOLATION_LEVELS}")
    return level


def require_isolation(isolation: str | None = None) -> Capabilities:
    """This host's capabilities if they meet the level asked for; else SandboxUnavailable
    naming each missing feature and why it is missing."""
    level = resolve_level(isolation)
    caps = capabilities()
    lacking = caps.lacking(level)
    if lacking:
        what = "; ".join(f"{FEATURES[f]}: {caps.missing.get(f, 'unavailable')}" for f in lacking)
        weaker = [lvl for lvl in ISOLATION_LEVELS[ISOLATION_LEVELS.index(level) + 1:]
                  if not caps.lacking(lvl)]
        raise SandboxUnavailable(
            f"sandbox refuses to run untrusted code: isolation level {level!r} needs what this "
            f"host lacks: {what}. Provide it, or opt into a weaker level explicitly (isolation="
            f"{weaker[0]!r} or {ENV_ISOLATION}={weaker[0]}; logged on every run)")
    return caps


def warn_if_weaker(level: str, caps: Capabilities, who: str) -> None:
    """Logs a warning when a weaker level than 'full' was opted into (every call)."""
    if level != "full":
        lacking = caps.lacking("full")
        log.warning("%s: sandbox isolation level %r was opted into (weaker than 'full'); "
                    "this run lacks %s; it enforces: %s", who, level,
                    ", ".join(FEATURES[f] for f in lacking) if lacking else "nothing of 'full' "
                    "(everything is available here)", caps.describe())


def _probe(caps: Capabilities) -> str | None:
    """None if a trial run under `caps` works (no-new-privileges included), else why not."""
    program = ("print(dict(l.split(':\\t') for l in open('/proc/self/status').read()"
               ".splitlines() if ':\\t' in l).get('NoNewPrivs'))")
    try:
        session = Session({"main.py": program}, "main.py", SandboxLimits(wall_s=10.0),
                          frames=False, caps=caps)
        session.wait()
        res = session.close()
    except (SandboxError, OSError) as e:
        return str(e).replace(_SETUP_ERROR.decode(), "").strip() or type(e).__name__
    if not res.ok or res.output.strip() != b"1":
        return f"trial run failed (exit {res.returncode}): {res.output[-300:]!r}"
    return None


@functools.lru_cache(maxsize=1)
def capabilities() -> Capabilities:
    """Strongest isolation that works on this host, found once per process by trial runs."""
    root = os.geteuid() == 0
    if not sys.platform.startswith("linux"):
        why = f"not Linux ({sys.platform})"
        return Capabilities(root, False, False, False, False, None, False,
                            {f: why for f in FEATURES})
    plan, cg_why = _cgroup_plan()
    _sweep_stale_cgroups(plan)
    cg = plan.version
    kill = any(kind in ("v2", "kill") for kind, _ in plan.dirs)
    missing: dict[str, str] = {}
    if cg is None:
        missing["cgroup_limits"] = cg_why or "unavailable"
    tries = ([(True, False, True), (False, False, True), (True, False, False), (False, False, False)]
             if root else [(True, True, False), (False, False, False)])
    first_why = None
    for ns, userns, uid_switch in tries:
        options = [(cg, kill)] + ([(None, False)] if (cg or kill) else [])
        for cg_try, kill_try in options:
            caps = Capabilities(root, ns, userns, uid_switch, True, cg_try, kill_try)
            why = _probe(caps)
            if why is None:
                if cg and not cg_try:
                    missing["cgroup_limits"] = f"a trial run in the cgroup failed: {first_why}"
                if not ns:
                    missing["namespaces"] = (f"trial run failed: {first_why}" if root else
                                             f"not root, and a user namespace failed: {first_why}")
                if not (uid_switch or userns):
                    missing["unprivileged"] = (f"uid switch failed: {first_why}" if root else
                                               "not root, and no user namespace")
                return dataclasses.replace(caps, missing=missing)
            first_why = first_why or why
    return Capabilities(root, False, False, False, False, None, False,
                        {f: missing.get(f, f"no trial run worked: {first_why}") for f in FEATURES})
