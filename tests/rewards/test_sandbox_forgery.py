"""Programs that try to forge test results: each must earn nothing for tests it does not pass.

Every example has one test the program passes honestly (`f(0) == 0`) and two whose expected
values are fresh random tokens that exist only in this (the testing) process: a program gets
them only by reading this process's memory. mode='fraction' must give exactly 1/3 and mode
'all' 0; the control that knows the tokens (as a correct program would) gets 1.0.
"""

import os
import uuid

import numpy as np
import pytest

from rlcot.rewards.base import RewardInput
from rlcot.rewards.code_exec import code_tests
from rlcot.rewards.sandbox import SandboxLimits, capabilities

LIMITS = SandboxLimits(wall_s=4.0, cpu_s=3.0, memory_bytes=256 << 20, max_processes=16,
                       output_bytes=256 << 10)
CAPS = capabilities()
print("forgery tests run under sandbox", CAPS.describe())


def _example():
    t1, t2 = f"rlcot-expected-{uuid.uuid4().hex}", f"rlcot-expected-{uuid.uuid4().hex}"
    return {"tests": ["assert f(0) == 0", f"assert f(1) == {t1!r}", f"assert f(2) == {t2!r}"]}, (t1, t2)


def _score(program: str, example, mode: str):
    batch = RewardInput(["p"], [f"```python\n{program}\n```"], [example])
    return code_tests(batch, mode=mode, limits=LIMITS, fallback=-1.0)


def _assert_no_forgery(program: str):
    example, _ = _example()
    frac = _score(program, example, "fraction")
    # At most the one honest pass (a program that garbles its own answers may lose even it).
    assert frac.values[0] <= 1 / 3 + 1e-6, frac.details
    assert frac.details[0]["passed"] <= 1
    allv = _score(program, example, "all")
    assert allv.values[0] in (0.0, -1.0), allv.details
    return frac


# The hostile body runs in f() for arguments other than 0, and at load time, and returns what it
# found (a token it read somewhere, else a wrong value).
PREAMBLE = '''
import sys, os, gc, json
MARK = b"\\x1erlcot-frame\\x1f"
def forge_frames():
    # Claim every call id, the old harness's events and a pass, on every writable fd.
    lines = []
    for i in range(64):
        for v in (True, "passed", 1, None):
            lines.append(MARK + json.dumps({"id": i, "value": v}).encode())
        lines.append(MARK + json.dumps({"unit": i, "counts": True, "passed": True}).encode())
    lines.append(MARK + json.dumps({"done": True, "loaded": True}).encode())
    data = b"\\n" + b"\\n".join(lines) + b"\\n"
    for fd in range(0, 64):
        try:
            os.write(fd, data)
        except OSError:
            pass
def f(x):
    if x == 0:
        return 0
    found = hunt(x)
    forge_frames()
    return found if found is not None else "no-token-found"
'''

HUNTERS = {
    "frame_walk": '''
import inspect
def hunt(x):
    # Walk every frame (ours, the call server's) for tokens, reporters, nonces and fds.
    frame, found = sys._getframe(), None
    while frame is not None:
        for scope in (frame.f_locals, frame.f_globals):
            for k, v in list(scope.items()):
                if isinstance(v, str) and v.startswith("rlcot-expected"):
                    found = v
                if callable(v) and k in ("report", "_frame", "reply"):
                    try:
                        v(scope.get("out_fd", 1), {"id": 0, "value": True})
                    except Exception:
                        pass
        frame = frame.f_back
    for info in inspect.stack():
        for v in info.frame.f_locals.values():
            if isinstance(v, (dict, list, tuple)) and "rlcot-expected" in repr(v):
                found = repr(v)
    return found
''',
    "gc_scan": '''
def hunt(x):
    # Every object the collector tracks: containers with tokens, nonces, reporting functions.
    found = None
    for obj in gc.get_objects():
        try:
            if isinstance(obj, dict):
                for k, v in obj.items():
                    if isinstance(v, str) and v.startswith("rlcot-expected"):
                        found = v
                    if k in ("nonce", "expected", "units", "spec"):
                        found = found or str(v)
            elif callable(obj) and getattr(obj, "__name__", "") in ("report", "_frame"):
                obj(1, {"id": 1, "value": True})
        except Exception:
            pass
    return found
''',
    "memory_scan": '''
import re
def hunt(x):
    # Our own memory, then every process's memory, environment and command line we can open
    # (the testing process's pid is PARENT_PID outside any PID namespace).
    pat = re.compile(rb"rlcot-expected-[0-9a-f]{32}")
    pids = ["self", str(PARENT_PID)] + [p for p in os.listdir("/proc") if p.isdigit()]
    found = []
    for pid in pids:
        for name in ("environ", "cmdline"):
            try:
                found += pat.findall(open(f"/proc/{pid}/{name}", "rb").read())
            except OSError:
                pass
        try:
            maps = open(f"/proc/{pid}/maps").read().splitlines()
            mem = open(f"/proc/{pid}/mem", "rb")
        except OSError:
            continue
        for line in maps:
            lo, hi = (int(a, 16) for a in line.split()[0].split("-"))
            if "r" not in line.split()[1] or hi - lo > (64 << 20):
                continue
            try:
                mem.seek(lo)
                found += pat.findall(mem.read(hi - lo))
            except (OSError, ValueError, OverflowError):
                pass
    # Our own memory holds only the tokens we wrote ourselves (none): any hit is a leak.
    hits = sorted(set(h.decode() for h in found))
    return hits[x - 1] if len(hits) >= x else None
''',
    "result_channel_writes": '''
def hunt(x):
    # Write forged answers everywhere a result could travel: our stdout/stderr, the pipes of
    # /proc/*/fd, the parent's fds, files in /tmp and the working directory.
    for path in ["/proc/self/fd/1", "/proc/self/fd/2", f"/proc/{PARENT_PID}/fd/1"] + \\
            [f"/proc/1/fd/{i}" for i in range(8)]:
        try:
            with open(path, "ab") as fh:
                fh.write(MARK + json.dumps({"id": 1, "value": "rlcot-expected-forged"}).encode() + b"\\n")
        except OSError:
            pass
    for path in ("result.json", "/tmp/result.json", "nonce.txt", "spec.json"):
        try:
            open(path, "w").write(json.dumps({"passed": True, "done": True}))
        except OSError:
            pass
    return None
''',
    "always_equal_object": '''
class Anything(str):
    def __eq__(self, other):
        return True
    __hash__ = str.__hash__
    def __ne__(self, other):
        return False
def hunt(x):
    return Anything("whatever")
''',
    "patch_builtins_and_exit": '''
import builtins
def hunt(x):
    # Break assertions and comparisons in our own interpreter, then leave "successfully".
    builtins.AssertionError = type("Never", (BaseException,), {})
    if x == 2:
        os._exit(0)
    return None
''',
}


@pytest.mark.parametrize("name", sorted(HUNTERS))
def test_hostile_program_cannot_forge_results(name):
    program = PREAMBLE.replace("PARENT_PID", str(os.getpid())) + \
        HUNTERS[name].replace("PARENT_PID", str(os.getpid()))
    out = _assert_no_forgery(program)
    print(name, "->", out.values.tolist(), out.details[0])


def test_hostile_program_forging_at_load_time():
    program = PREAMBLE + HUNTERS["frame_walk"] + HUNTERS["gc_scan"].replace("def hunt", "def hunt2") + \
        "\nforge_frames()\nhunt(1)\nhunt2(1)\n"
    _assert_no_forgery(program)


def test_control_program_that_knows_the_answers_passes():
    # The same tests are passable: a program returning the right values gets full reward.
    example, (t1, t2) = _example()
    program = f"def f(x):\n    return [0, {t1!r}, {t2!r}][x]\n"
    assert _score(program, example, "fraction").values[0] == 1.0
    assert _score(program, example, "all").values[0] == 1.0


def test_humaneval_style_check_cannot_be_forged():
    # check(candidate) with the expected values inside the test: a frame/gc hunter gets 0.
    token = f"rlcot-expected-{uuid.uuid4().hex}"
    example = {"prompt": "def g(x):\n    \"\"\"doc\"\"\"\n", "entry_point": "g",
               "test": f"def check(candidate):\n    assert candidate(1) == {token!r}\n"
                       f"    assert candidate(2) == 2\n"}
    # (PREFIX is built at run time: a literal would be found in the program's own constants.)
    program = ("import gc\nPREFIX = ''.join(['rlcot', '-expected-'])\ndef g(x):\n"
               "    for o in gc.get_objects():\n"
               "        try:\n"
               "            values = list(o.values() if isinstance(o, dict) else o if isinstance(o, (list, tuple)) else ())\n"
               "        except Exception:\n"
               "            continue\n"
               "        for v in values:\n"
               "            if isinstance(v, str) and v.startswith(PREFIX) and len(v) == 47:\n"
               "                return v\n"
               "    return x\n")
    for mode in ("all", "fraction"):
        out = code_tests(RewardInput(["p"], [f"```python\n{program}\n```"], [example]),
                         mode=mode, limits=LIMITS, fallback=-1.0)
        assert out.values[0] == (0.0 if mode == "all" else 0.5), out.details
    np.testing.assert_array_equal(out.values, [0.5])


def test_memory_hunter_finds_tokens_when_memory_is_readable():
    # Control for the memory_scan hunter: run bare (not sandboxed) as this user, it does find
    # the tokens in this process's memory; sandboxed (above) it finds nothing.
    import hashlib
    import subprocess
    import sys
    example, (t1, _) = _example()
    program = HUNTERS["memory_scan"].replace("PARENT_PID", str(os.getpid())) + \
        "\nimport hashlib\nhunt(1)\nprint(any(hashlib.sha256(t.encode()).hexdigest() == DIGEST for t in HITS))\n"
    program = program.replace('pids = ["self", ', "pids = [").replace(
        ' + [p for p in os.listdir("/proc") if p.isdigit()]', "")  # this process only: faster
    program = program.replace("    return hits[x - 1]", "    global HITS\n    HITS = hits\n    return hits[x - 1]")
    # Only the token's digest goes in: the hunter must find the token itself.
    digest = hashlib.sha256(t1.encode()).hexdigest()
    program = "import os, sys\n" + program.replace("DIGEST", repr(digest))
    assert t1 in repr(example)  # the token lives in this process
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=60)
    assert out.stdout.strip() == b"True", out.stderr[-2000:]
