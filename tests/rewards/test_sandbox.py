"""Sandbox: hostile programs get the fallback within their limits and change nothing outside."""

import os
import dataclasses
import socket
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from rlcot.rewards.base import RewardInput
from rlcot.rewards.code_exec import code_tests
from rlcot.rewards.sandbox import SandboxLimits, capabilities, run_python

LIMITS = SandboxLimits(wall_s=2.0, cpu_s=1.0, memory_bytes=256 << 20, max_processes=16,
                       output_bytes=64 << 10)
CAPS = capabilities()
needs_isolation = pytest.mark.skipif(
    not (CAPS.namespaces or CAPS.uid_switch),
    reason=f"no namespaces and no uid switch on this host: {CAPS.describe()}")


def hostile_reward(body: str, limits: SandboxLimits = LIMITS):
    """Scores a solution whose module-level code is `body`; its one test would pass if the
    hostile code were harmless (f() == 1), so a 1.0 would mean the sandbox let it through."""
    example = {"tests": ["assert f() == 1"]}
    batch = RewardInput(["p"], [f"```python\n{body}\ndef f():\n    return 1\n```"], [example])
    return code_tests(batch, limits=limits, fallback=-1.0)


def test_capabilities_on_this_host():
    print("sandbox enforces:", CAPS.describe(), "missing:", dict(CAPS.missing))
    assert set(CAPS.missing) == {"namespaces", "unprivileged", "no_new_privs",
                                 "cgroup_limits"} - CAPS.features  # every gap has a reason
    if os.geteuid() == 0 and sys.platform.startswith("linux"):
        assert CAPS.no_new_privs and (CAPS.uid_switch or CAPS.namespaces)


def test_harmless_program_passes():
    out = hostile_reward("x = 1")
    assert out.values.tolist() == [1.0] and out.details[0]["outcome"] == "ok"


def test_infinite_loop_stopped_by_cpu_or_wall_limit():
    t0 = time.monotonic()
    out = hostile_reward("while True:\n    pass")
    assert time.monotonic() - t0 < LIMITS.wall_s + 2
    assert out.values.tolist() == [-1.0]
    assert out.details[0]["outcome"] in ("timeout", "crashed")  # wall clock or RLIMIT_CPU


def test_sleeping_program_stopped_by_wall_clock():
    t0 = time.monotonic()
    out = hostile_reward("import time\ntime.sleep(600)")
    assert time.monotonic() - t0 < LIMITS.wall_s + 2
    assert out.values.tolist() == [-1.0] and out.details[0]["outcome"] == "timeout"
    assert out.metrics["n_program_timeout"] == 1


@pytest.mark.skipif(not (CAPS.namespaces or CAPS.cgroup or CAPS.uid_switch),
                    reason="nothing on this host bounds the number of processes")
def test_fork_bomb_contained():
    # Every child forks forever; the process cap stops it, the namespace/group kill cleans up.
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    t0 = time.monotonic()
    out = hostile_reward(bomb)
    assert time.monotonic() - t0 < LIMITS.wall_s + 3
    assert out.values.tolist() == [-1.0]
    # Same bomb under a unique file name, to find any survivor by its command line.
    name = f"bomb_{uuid.uuid4().hex}.py"
    res = run_python({name: bomb}, name, LIMITS)
    assert res.timed_out or res.returncode != 0
    time.sleep(0.2)
    survivors = [p for p in os.listdir("/proc") if p.isdigit() and name.encode() in _cmdline(p)]
    assert not survivors, f"fork bomb processes survived: {survivors}"


def _cmdline(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def test_memory_bomb():
    out = hostile_reward("x = bytearray(1 << 33)")  # 8 GiB against a 256 MiB limit
    assert out.values.tolist() == [0.0]  # MemoryError at load: the test fails, not the sandbox
    assert out.details[0]["outcome"] == "not_loaded"
    t0 = time.monotonic()
    out = hostile_reward("chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 20))")
    assert time.monotonic() - t0 < LIMITS.wall_s + 2
    assert out.values.tolist()[0] in (0.0, -1.0)  # MemoryError (rlimit) or OOM kill (cgroup)


@needs_isolation
def test_writes_outside_workdir_change_nothing(tmp_path):
    targets = [tmp_path / "escaped.txt", f"/tmp/rlcot-escape-{uuid.uuid4().hex}",
               f"/var/tmp/rlcot-escape-{uuid.uuid4().hex}", os.path.join(os.getcwd(), "escaped.txt")]
    writes = "\n".join(f"try:\n    open({str(t)!r}, 'w').write('x')\nexcept OSError:\n    pass"
                       for t in targets)
    out = hostile_reward(writes + f"\nassert open({str(targets[0])!r}).read() == 'x'")
    assert out.values.tolist() == [0.0]  # the write to the test's directory failed inside
    for t in targets:
        assert not os.path.exists(t), f"sandboxed program created {t}"
    assert list(tmp_path.iterdir()) == []


def test_parent_environment_invisible(monkeypatch):
    secret = f"rlcot-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("RLCOT_TEST_SECRET", secret)
    res = run_python({"main.py": "import os\nprint(dict(os.environ))"}, limits=LIMITS)
    assert res.returncode == 0, res.output
    assert b"HOME" in res.output  # the program did print its environment
    assert secret.encode() not in res.output and b"RLCOT_TEST_SECRET" not in res.output


@needs_isolation
def test_other_processes_environment_unreadable(monkeypatch):
    secret = f"rlcot-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("RLCOT_TEST_SECRET", secret)
    program = ("import glob\nhits = []\n"
               "for path in glob.glob('/proc/*/environ'):\n"
               "    try:\n        hits.append(open(path, 'rb').read())\n"
               "    except OSError:\n        pass\n"
               "print(len(hits), b''.join(hits).decode(errors='replace'))\n")
    res = run_python({"main.py": program}, limits=LIMITS)
    assert res.returncode == 0, res.output
    assert secret.encode() not in res.output


@pytest.mark.skipif(not CAPS.namespaces, reason="no network namespace on this host")
def test_network_unreachable():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        out = hostile_reward(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), 1)")
        assert out.values.tolist() == [0.0] and out.details[0]["outcome"] == "not_loaded"
        with pytest.raises(socket.timeout):
            server.accept()  # nobody connected
    finally:
        server.close()


@pytest.fixture
def sentinel():
    """A process of this test's uid that hostile programs try to kill."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


# With PID namespace + uid switch, the expected reward of each attempt: refused (the program
# goes on and passes, 1.0) or it killed only itself (fallback, -1.0).
KILLS = {"os.kill(os.getppid(), 9)": 1.0, "os.killpg(os.getpgrp(), 9)": -1.0,
         "os.kill(-1, 9)": 1.0, "os.killpg(0, 9)": -1.0, "os.kill(SENTINEL, 9)": 1.0}


@pytest.mark.parametrize("kill", sorted(KILLS))
def test_killing_parent_group_or_neighbours(kill, sentinel):
    if not (CAPS.uid_switch or CAPS.namespaces) and kill in ("os.kill(-1, 9)", "os.kill(SENTINEL, 9)"):
        pytest.skip("an unisolated program of the same uid can kill this test's processes")
    code = kill.replace("SENTINEL", str(sentinel.pid))
    out = hostile_reward(f"import os\ntry:\n    {code}\nexcept OSError:\n    pass\n"
                         "import time\ntime.sleep(0.1)")
    assert sentinel.poll() is None, "the sandboxed program killed a process outside the sandbox"
    if CAPS.uid_switch and CAPS.namespaces:
        assert out.values.tolist() == [KILLS[kill]], out.details


def test_gigabyte_of_output_capped():
    t0 = time.monotonic()
    res = run_python({"main.py": "import sys\nblock = 'x' * (1 << 20)\n"
                                 "for _ in range(1024):\n    sys.stdout.write(block)"},
                     limits=LIMITS)
    assert time.monotonic() - t0 < LIMITS.wall_s + 2
    assert res.output_truncated and len(res.output) == LIMITS.output_bytes
    out = hostile_reward("import sys\nfor _ in range(1024):\n    sys.stdout.write('x' * (1 << 20))")
    assert out.values.tolist() == [-1.0] and out.details[0]["outcome"] == "output_limit"


def test_forged_result_lines_do_not_count():
    # Printing lines that look like the old harness's reports earns nothing (the tests run
    # outside the sandbox; test_sandbox_forgery.py has the hostile programs that try harder).
    out = hostile_reward('print(\'{"unit": 0, "counts": true, "passed": true}\')\n'
                         'print(\'{"done": true}\')\nimport os\nos._exit(0)')
    assert out.values.tolist() == [-1.0]


def test_program_gets_clean_signal_state():
    res = run_python({"main.py": "import signal\nprint(signal.pthread_sigmask(signal.SIG_BLOCK, []))"},
                     limits=LIMITS)
    assert res.output == b"set()\n"


def test_file_size_limit():
    res = run_python({"main.py": "open('big', 'wb').write(b'x' * (64 << 20))"},
                     limits=dataclasses.replace(LIMITS, file_bytes=1 << 20))
    assert res.returncode != 0  # SIGXFSZ or OSError: File too large


def test_many_sandboxes_in_a_row_are_fast():
    t0 = time.monotonic()
    for _ in range(5):
        assert run_python({"main.py": "print(1)"}, limits=LIMITS).output == b"1\n"
    print(f"sandbox round trip: {(time.monotonic() - t0) / 5 * 1e3:.0f} ms")
    assert np.isfinite(time.monotonic() - t0)
