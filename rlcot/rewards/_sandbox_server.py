"""Runs inside the sandbox next to the candidate program: loads it, then answers calls.

Copied into the sandbox as `server.py` and run there with the candidate in `solution.py`.
Standard library only. It holds no secret and decides nothing: it loads the program, then for
each request line on stdin ({"id", "name", "args", "kwargs"}) calls the program's function and
writes one frame (FRAME_MARKER + JSON) with the encoded return value or the exception's type
name. The candidate shares this process and may tamper with all of it; that only changes what
the candidate answers, which the trusted parent then checks against values it never sends.

`encode` / `decode` are the wire format (plain data only: None, bool, int, float, complex, str,
bytes, list, tuple, set, frozenset, dict); the parent imports them from this module.
"""

import json
import os
import sys

FRAME_MARKER = b"\x1erlcot-frame\x1f"
MAX_DEPTH = 100


def encode(x, depth=0):
    """Plain data -> JSON-able tree; TypeError for anything else (exact types only)."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    t = type(x)
    if x is None or t is bool or t is int or t is str:
        return x
    if t is float:
        return x if x == x and x not in (float("inf"), float("-inf")) else {"x": repr(x)}
    if t is list:
        return [encode(v, depth + 1) for v in x]
    if t is tuple:
        return {"t": [encode(v, depth + 1) for v in x]}
    if t is set or t is frozenset:
        return {"s" if t is set else "f": [encode(v, depth + 1) for v in x]}
    if t is dict:
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in x.items()]}
    if t is bytes:
        return {"b": x.hex()}
    if t is complex:
        return {"c": [encode(x.real), encode(x.imag)]}
    raise TypeError(f"a {t.__name__} cannot cross the sandbox boundary (plain data only)")


_SPECIAL = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def decode(tree, depth=0):
    """JSON tree -> plain data of exact built-in types; ValueError/TypeError if malformed."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    t = type(tree)
    if tree is None or t in (bool, int, float, str):
        return tree
    if t is list:
        return [decode(v, depth + 1) for v in tree]
    if t is not dict or len(tree) != 1:
        raise ValueError("malformed value")
    (tag, v), = tree.items()
    if tag == "x" and v in _SPECIAL:
        return _SPECIAL[v]
    if tag == "b" and type(v) is str:
        return bytes.fromhex(v)
    if type(v) is not list:
        raise ValueError("malformed value")
    items = [decode(e, depth + 1) for e in v]
    if tag == "t":
        return tuple(items)
    if tag == "s":
        return set(items)
    if tag == "f":
        return frozenset(items)
    if tag == "c" and len(items) == 2 and all(type(e) in (int, float) for e in items):
        return complex(*items)
    if tag == "d" and all(type(e) is list and len(e) == 2 for e in items):
        return {k: val for k, val in items}
    raise ValueError("malformed value")


def _frame(out_fd, obj):
    data = b"\n" + FRAME_MARKER + json.dumps(obj).encode() + b"\n"
    while data:
        data = data[os.write(out_fd, data):]


def main():
    out_fd = os.dup(1)
    os.dup2(2, 1)  # the program's prints go to stderr (the same pipe), never between frames
    requests = os.fdopen(os.dup(0), "rb")
    os.close(0)
    g = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        with open("solution.py", encoding="utf-8") as f:
            source = f.read()
        exec(compile(source, "solution.py", "exec"), g)
    except BaseException as e:  # noqa: BLE001 - SystemExit at load is a failure too
        _frame(out_fd, {"loaded": False, "error": repr(e)[:300]})
        return
    _frame(out_fd, {"loaded": True})
    for line in requests:
        req = json.loads(line)
        try:
            fn = g.get(req["name"])
            if fn is None:
                raise NameError(f"name {req['name']!r} is not defined")
            args = decode(req["args"])
            kwargs = decode(req["kwargs"])
            value = encode(fn(*args, **kwargs))
            reply = {"id": req["id"], "value": value}
        except BaseException as e:  # noqa: BLE001 - the call's failure is its answer
            reply = {"id": req["id"], "error": type(e).__name__, "message": str(e)[:300]}
        try:
            _frame(out_fd, reply)
        except ValueError as e:  # e.g. an int too long to print
            _frame(out_fd, {"id": req["id"], "error": "ValueError", "message": str(e)[:300]})


if __name__ == "__main__":
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
    main()
