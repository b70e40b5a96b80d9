"""On-disk cache of toy tokenizers and base models: where it lives, content keys, atomic writes,
and parameter (de)serialisation that restores the exact bits."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

log = logging.getLogger(__name__)

ENV_CACHE_DIR = "RLCOT_TOYWORLD_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/rlcot/toyworld")


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The argument, else $RLCOT_TOYWORLD_CACHE, else ~/.cache/rlcot/toyworld (created)."""
    chosen = Path(path if path is not None else os.environ.get(ENV_CACHE_DIR) or DEFAULT_CACHE_DIR)
    chosen = chosen.expanduser()
    chosen.mkdir(parents=True, exist_ok=True)
    return chosen


@contextlib.contextmanager
def building(name: str, directory: str | os.PathLike | None = None) -> Iterator[None]:
    """An exclusive lock named `name` in the cache directory, held while the block runs: one
    process at a time builds a given entry, the others wait (then find it built). An advisory
    file lock (flock), released by the kernel if the holder dies."""
    import fcntl
    path = cache_dir(directory) / f".{name}.lock"
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process building %s (lock %s)", name, path)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def content_key(*parts: Any) -> str:
    """A 16-hex-digit key of JSON-serialisable parts (dict keys sorted)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


def texts_key(texts: Iterable[str], *extra: Any) -> str:
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return content_key(h.hexdigest(), *extra)


def write_atomic(path: Path, data: bytes) -> None:
    """Writes via a temporary file and a rename, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _leaf_names(tree: Any) -> tuple[list[str], list[Any], Any]:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [jax.tree_util.keystr(p) for p, _ in leaves], [x for _, x in leaves], treedef


def save_params(path: Path, params: Any) -> None:
    """Every leaf as a named array in one .npz file (exact bits)."""
    names, leaves, _ = _leaf_names(params)
    arrays = {name: np.asarray(jax.device_get(x)) for name, x in zip(names, leaves)}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_atomic(path, buf.getvalue())


def load_params(path: Path, like: Any) -> Any:
    """Arrays saved by save_params, in the structure of `like` (e.g. an abstract state);
    names, shapes and dtypes must match."""
    names, leaves, treedef = _leaf_names(like)
    with np.load(path) as data:
        missing = sorted(set(names) - set(data.files))
        extra = sorted(set(data.files) - set(names))
        if missing or extra:
            raise ValueError(f"{path}: parameters do not match the model: missing {missing}, "
                             f"unexpected {extra}")
        out = []
        for name, ref in zip(names, leaves):
            arr = data[name]
            if arr.shape != tuple(ref.shape) or arr.dtype != np.dtype(ref.dtype):
                raise ValueError(f"{path}: {name} is {arr.dtype}{list(arr.shape)}, the model "
                                 f"wants {np.dtype(ref.dtype)}{list(ref.shape)}")
            out.append(jax.numpy.asarray(arr))
    return jax.tree_util.tree_unflatten(treedef, out)


def source_digest(files: Sequence[str | os.PathLike]) -> str:
    """Hash of source files whose code decides what a cached artefact holds."""
    h = hashlib.sha256()
    for f in files:
        h.update(Path(f).read_bytes())
    return h.hexdigest()[:16]
