"""Sandbox launcher: isolates, limits and de-privileges itself, then execs the untrusted program.

Run by rlcot.rewards.sandbox as `python -s -S -B _sandbox_init.py CONFIG_JSON` in a new session.
Standard library only, and no rlcot import: it must start in milliseconds. Exit code 125 with a
line starting with SETUP_ERROR on stdout means the sandbox itself could not be set up.
"""

import ctypes
import json
import os
import resource
import signal
import sys
import time

SETUP_ERROR = "rlcot-sandbox-setup-error:"
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
# Where the interpreter (and optionally site-packages) appear inside the mount namespace: the
# real ones may sit under a directory the unprivileged uid cannot traverse (e.g. /root/.pyenv).
NS_PYTHON, NS_SITE = "/tmp/.python", "/tmp/.site"

_libc = ctypes.CDLL(None, use_errno=True)


def _fail(msg: str) -> None:
    sys.stdout.write(f"{SETUP_ERROR} {msg}\n")
    sys.stdout.flush()
    os._exit(125)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        _fail(f"{what}: {os.strerror(ctypes.get_errno())}")


def _die_with_parent() -> None:
    # A killed parent must take the whole sandbox with it (no orphaned sleepers).
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")


def _mount(src, target: str, fstype, flags: int, data) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _exit_like(status: int) -> None:
    """Leaves with the same outcome as a waited-for child's status."""
    if os.WIFSIGNALED(status):
        os._exit(128 + os.WTERMSIG(status))
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def _wait_reaping(child: int) -> int:
    """As PID 1 of the namespace: reap every orphan until `child` exits; return its status."""
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 0
        if pid == child:
            return status


def _kill_descendants() -> None:
    """Kills every child (the subreaper's inherited orphans included) until none is left."""
    me = str(os.getpid())
    for _ in range(100_000):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = f.read().rsplit(")", 1)[1].split()[1]
            except (OSError, IndexError):
                continue
            if ppid == me:
                try:
                    os.kill(int(entry), signal.SIGKILL)
                except OSError:
                    pass
        try:  # reap; a killed child's own children come to us in the next round
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.001)
        except ChildProcessError:
            return


def _read_files(directory: str) -> dict[str, bytes]:
    files = {}
    for name in os.listdir(directory):
        with open(os.path.join(directory, name), "rb") as f:
            files[name] = f.read()
    return files


def _setup_filesystem(cfg: dict) -> str:
    """In the new mount namespace: private /tmp, /var/tmp, /dev/shm and /proc; returns workdir."""
    files = _read_files(cfg["input_dir"])
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    size = f"size={cfg['tmpfs_bytes']},mode=1777"
    for target in ("/tmp", "/var/tmp", "/dev/shm"):
        if os.path.isdir(target):
            _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, size)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    for src, dst in ((cfg["python_prefix"], NS_PYTHON), (cfg["site_dir"], NS_SITE)):
        if src:
            os.mkdir(dst, 0o755)
            _mount(src, dst, None, MS_BIND | MS_REC, None)
            # Keep the source's own flags (ST_* equal MS_* here): in a user namespace they are
            # locked, and a remount that drops one fails.
            kept = os.statvfs(src).f_flag & (MS_NOSUID | MS_NODEV | MS_NOEXEC | 1024 | 2048 | 4096)
            _mount(None, dst, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | kept, None)
    workdir = "/tmp/work"
    os.mkdir(workdir, 0o700)
    for name, data in files.items():
        with open(os.path.join(workdir, name), "wb") as f:
            f.write(data)
    if cfg["uid"] is not None:
        for name in [*files, ""]:
            os.chown(os.path.join(workdir, name), cfg["uid"], cfg["uid"])
    return workdir


def _run_program(cfg: dict, workdir: str, python: str, site_dir: str | None) -> None:
    """Limits, de-privileges and execs the program; never returns."""
    lim = cfg["limits"]
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1))
        resource.setrlimit(resource.RLIMIT_AS, (lim["memory_bytes"],) * 2)
        resource.setrlimit(resource.RLIMIT_FSIZE, (lim["file_bytes"],) * 2)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lim["max_open_files"],) * 2)
        if cfg["nproc"] is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (cfg["nproc"],) * 2)
        if cfg["uid"] is not None:
            os.setgroups([])
            os.setgid(cfg["uid"])
            os.setuid(cfg["uid"])
        _die_with_parent()  # cleared by setuid, so set again
        # No setuid binary or file capability can give the program privileges back.
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
        os.chdir(workdir)
        os.umask(0o077)
    except OSError as e:
        _fail(f"limits/privileges: {e}")
    env = dict(cfg["env"], HOME=workdir, TMPDIR=workdir)
    if site_dir:
        env["PYTHONPATH"] = site_dir
    os.execve(python, [python, "-s", "-S", "-B", cfg["program"]], env)


def _write_id_maps(uid: int, gid: int) -> None:
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"0 {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"0 {gid} 1")


def main() -> None:
    cfg = json.loads(sys.argv[1])
    signal.pthread_sigmask(signal.SIG_SETMASK, [])  # the caller blocks SIGALRM around our start
    _die_with_parent()
    if os.getppid() != cfg["parent_pid"]:
        os._exit(125)  # parent died before PDEATHSIG was armed
    for path in cfg["cgroups"]:
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    if not cfg["namespaces"]:
        # Stay in between: the program's getppid() is this launcher, never the caller. As a
        # child subreaper it inherits whatever detaches (setsid, double fork) and kills it all
        # when the program ends or the caller sends SIGTERM.
        _check(_libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(CHILD_SUBREAPER)")
        child = os.fork()
        if child == 0:
            _run_program(cfg, cfg["input_dir"], cfg["python"], cfg["site_dir"])

        def on_term(signum, frame):
            _kill_descendants()
            os._exit(128 + signal.SIGKILL)
        signal.signal(signal.SIGTERM, on_term)
        status = os.waitpid(child, 0)[1]
        _kill_descendants()
        _exit_like(status)
    flags = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID
    flags |= 0 if cfg["network"] else CLONE_NEWNET
    uid, gid = os.getuid(), os.getgid()
    _check(_libc.unshare(flags | (CLONE_NEWUSER if cfg["user_namespace"] else 0)), "unshare")
    if cfg["user_namespace"]:
        _write_id_maps(uid, gid)
    init = os.fork()  # becomes PID 1 of the new PID namespace
    if init:
        _exit_like(os.waitpid(init, 0)[1])
    _die_with_parent()
    workdir = _setup_filesystem(cfg)
    child = os.fork()
    if child == 0:
        python = os.path.join(NS_PYTHON, os.path.relpath(cfg["python"], cfg["python_prefix"]))
        _run_program(cfg, workdir, python, NS_SITE if cfg["site_dir"] else None)
    # When PID 1 exits, the kernel kills every process left in the namespace.
    _exit_like(_wait_reaping(child))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - any setup failure must be reported, not hang
        _fail(repr(e))
