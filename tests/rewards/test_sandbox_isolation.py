"""Isolation levels: refusal when unavailable, explicit weaker opt-in (logged), detached processes,
network, no-new-privileges, cgroup limits. Tests that need a capability skip naming it; the
refusal and opt-in tests simulate the host and always run."""

import dataclasses
import logging
import os
import socket
import time
import uuid

import pytest

from rlcot.rewards import sandbox
from rlcot.rewards.base import RewardInput
from rlcot.rewards.code_exec import code_tests
from rlcot.rewards.sandbox import (Capabilities, SandboxLimits, SandboxUnavailable, Session,
                                   capabilities, run_python)

LIMITS = SandboxLimits(wall_s=2.0, cpu_s=2.0, memory_bytes=256 << 20, max_processes=16,
                       output_bytes=64 << 10)
CAPS = capabilities()
ROOT = os.geteuid() == 0
print("isolation tests run under sandbox", CAPS.describe())

BARE = Capabilities(root=ROOT, namespaces=False, user_namespace=False, uid_switch=False,
                    no_new_privs=True, cgroup=None, cgroup_kill=False,
                    missing={"namespaces": "simulated: unshare: Operation not permitted",
                             "unprivileged": "simulated: not root, and no user namespace",
                             "cgroup_limits": "simulated: no cgroup v1 memory hierarchy"})


def _batch():
    return RewardInput(["p"], ["```python\ndef f():\n    return 1\n```"],
                       [{"tests": ["assert f() == 1"]}])


@pytest.fixture
def no_process_may_start(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a sandbox process was started although isolation is unavailable")
    monkeypatch.setattr(sandbox.subprocess, "Popen", refuse)


def test_refuses_when_isolation_unavailable(monkeypatch, no_process_may_start):
    monkeypatch.delenv(sandbox.ENV_ISOLATION, raising=False)
    monkeypatch.setattr(sandbox, "capabilities", lambda: BARE)
    with pytest.raises(SandboxUnavailable) as info:
        code_tests(_batch())
    msg = str(info.value)
    print(msg)
    assert "refuses to run untrusted code" in msg and "'full'" in msg
    for reason in BARE.missing.values():  # each missing feature, with why
        assert reason in msg
    assert "isolation='none'" in msg and "RLCOT_SANDBOX_ISOLATION=none" in msg
    with pytest.raises(SandboxUnavailable, match="namespaces"):
        code_tests(_batch(), isolation="namespaces")
    with pytest.raises(SandboxUnavailable, match="cgroup memory and pids"):
        run_python({"main.py": "print(1)"}, limits=LIMITS)
    with pytest.raises(SandboxUnavailable):
        Session({"main.py": "print(1)"}, "main.py", LIMITS)
    with pytest.raises(ValueError, match="isolation level"):
        code_tests(_batch(), isolation="some")


def test_probe_failures_are_named(monkeypatch, no_process_may_start):
    """The real probe, with the host's answers simulated: no namespaces, no cgroups."""
    monkeypatch.setattr(sandbox, "_probe",
                        lambda caps: "unshare: Operation not permitted" if caps.namespaces else None)
    monkeypatch.setattr(sandbox, "_cgroup_plan",
                        lambda: (sandbox._CgroupPlan(None, ()), "no cgroup v1 memory hierarchy"))
    sandbox.capabilities.cache_clear()
    try:
        caps = sandbox.capabilities()
        assert not caps.namespaces and caps.cgroup is None
        with pytest.raises(SandboxUnavailable) as info:
            sandbox.require_isolation("full")
        assert "unshare: Operation not permitted" in str(info.value)
        assert "no cgroup v1 memory hierarchy" in str(info.value)
    finally:
        sandbox.capabilities.cache_clear()


def test_explicit_weaker_level_runs_and_logs_every_run(monkeypatch, caplog):
    # Simulated bare host: the opt-in 'none' runs (a harmless program) and warns each call.
    monkeypatch.setattr(sandbox, "capabilities", lambda: BARE)
    monkeypatch.delenv(sandbox.ENV_ISOLATION, raising=False)
    with caplog.at_level(logging.WARNING, logger="rlcot.rewards.sandbox"):
        out = code_tests(_batch(), isolation="none", limits=LIMITS)
        monkeypatch.setenv(sandbox.ENV_ISOLATION, "none")  # the same opt-in, by environment
        out2 = code_tests(_batch(), limits=LIMITS)
    assert out.values.tolist() == [1.0] and out2.values.tolist() == [1.0]
    assert out.details[0]["isolation"] == "none"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    for w in warnings:
        assert "'none' was opted into" in w and "cgroup memory and pids" in w and "namespaces" in w


@pytest.mark.skipif(not CAPS.namespaces, reason=f"no namespaces on this host: {CAPS.describe()}")
def test_namespaces_level_without_cgroups(monkeypatch, caplog):
    # This host minus its cgroups: 'full' is refused, 'namespaces' really runs and warns.
    weaker = dataclasses.replace(CAPS, cgroup=None, cgroup_kill=False,
                                 missing={"cgroup_limits": "simulated: no delegated cgroup"})
    monkeypatch.setattr(sandbox, "capabilities", lambda: weaker)
    monkeypatch.delenv(sandbox.ENV_ISOLATION, raising=False)
    with pytest.raises(SandboxUnavailable, match="simulated: no delegated cgroup"):
        code_tests(_batch())
    with caplog.at_level(logging.WARNING, logger="rlcot.rewards.sandbox"):
        out = code_tests(_batch(), isolation="namespaces", limits=LIMITS)
    assert out.values.tolist() == [1.0] and out.details[0]["isolation"] == "namespaces"
    assert any("'namespaces' was opted into" in r.getMessage() for r in caplog.records)


def _survivors(marker: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(pid)
            except OSError:
                pass
    return found


DETACH = """
import os, sys, time
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:          # double fork: the grandchild belongs to nobody
        os.setsid()
        time.sleep(120)
        os._exit(0)
    os._exit(0)
os.wait()
time.sleep(0.2)
print("detached", flush=True)
if STAY:
    time.sleep(120)             # the run ends by its wall clock instead
"""


def _configs():
    configs = {"this host": CAPS}
    if CAPS.namespaces:  # the PID namespace alone, without any cgroup kill
        configs["namespaces, no cgroups"] = dataclasses.replace(CAPS, cgroup=None, cgroup_kill=False)
    if ROOT:  # real weaker configurations, possible as root: no namespaces
        configs["uid switch + subreaper, no namespaces/cgroups"] = dataclasses.replace(
            CAPS, namespaces=False, cgroup=None, cgroup_kill=False)
        if CAPS.cgroup or CAPS.cgroup_kill:
            configs["uid switch + cgroup kill, no namespaces"] = dataclasses.replace(CAPS, namespaces=False)
    configs["subreaper only (level none)"] = dataclasses.replace(
        BARE, uid_switch=False) if not ROOT else dataclasses.replace(BARE)
    return configs


@pytest.mark.parametrize("stay", [False, True], ids=["program exits", "wall clock"])
@pytest.mark.parametrize("config", list(_configs()))
def test_detached_processes_die_with_the_run(config, stay):
    caps = _configs()[config]
    why = sandbox._probe(caps) if config != "this host" else None
    if why:
        pytest.skip(f"{config} does not work on this host: {why}")
    name = f"detach_{uuid.uuid4().hex}.py"
    t0 = time.monotonic()
    session = Session({name: DETACH.replace("STAY", str(stay))}, name,
                      dataclasses.replace(LIMITS, wall_s=1.5), frames=False, caps=caps)
    session.wait()
    res = session.close()
    assert time.monotonic() - t0 < 5
    assert b"detached" in res.output, res.output  # the daemon did start
    assert res.timed_out == stay
    time.sleep(0.1)
    assert not _survivors(name), f"detached processes outlived the run under {config}"


@pytest.mark.skipif(not CAPS.namespaces, reason="no network namespace on this host")
def test_network_only_when_allowed():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(2)
    port = server.getsockname()[1]
    program = {"main.py": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), 1)\nprint('connected')"}
    try:
        res = run_python(program, limits=LIMITS)
        assert b"connected" not in res.output and res.returncode != 0
        res = run_python(program, limits=dataclasses.replace(LIMITS, network=True))
        assert b"connected" in res.output, res.output
        server.accept()[0].close()
    finally:
        server.close()


def test_no_new_privileges_and_only_standard_fds():
    res = run_python({"main.py": "import os\nprint(open('/proc/self/status').read().split('NoNewPrivs:')[1].split()[0])\n"
                                 "print(sorted(int(f) for f in os.listdir('/proc/self/fd')))"},
                     limits=LIMITS)
    lines = res.output.decode().split("\n")
    assert lines[0] == "1", res.output
    assert eval(lines[1]) in ([0, 1, 2], [0, 1, 2, 3]), res.output  # 3: listdir's own fd


@pytest.mark.skipif(not CAPS.cgroup, reason=f"no cgroup limits on this host: {CAPS.describe()}")
def test_cgroup_memory_limit_covers_all_processes():
    # Four processes of 100 MiB each: every one is under RLIMIT_AS (256 MiB), together they are
    # over the cgroup's 256 MiB, so some are killed.
    program = ("import os, time\nkids = []\nfor _ in range(4):\n    pid = os.fork()\n"
               "    if pid == 0:\n        block = b'x' * (100 << 20)\n        time.sleep(0.5)\n        os._exit(0)\n"
               "    kids.append(pid)\nstatuses = [os.waitpid(k, 0)[1] for k in kids]\n"
               "print('all survived' if all(s == 0 for s in statuses) else 'killed')")
    res = run_python({"main.py": program}, limits=dataclasses.replace(LIMITS, wall_s=5.0))
    assert b"killed" in res.output or res.returncode != 0, res.output
    assert b"all survived" not in res.output
