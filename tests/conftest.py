"""Test-wide setup: 8 fake CPU devices for sharding tests and full-precision matmuls."""

import os

# Must be set before jax initialises its backends.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


import pytest  # noqa: E402


def _use_toy_cache(path):
    old = os.environ.get("RLCOT_TOYWORLD_CACHE")
    os.environ["RLCOT_TOYWORLD_CACHE"] = str(path)
    yield
    if old is None:
        os.environ.pop("RLCOT_TOYWORLD_CACHE", None)
    else:
        os.environ["RLCOT_TOYWORLD_CACHE"] = old


@pytest.fixture(scope="session")
def session_toy_cache_dir(tmp_path_factory):
    """One toy-world cache directory for the whole test session, shared by the xdist workers
    (their base temp directories are siblings; without xdist it is this session's own), so a
    tokenizer or cached base model with the same key is built once per session. Never the
    user's ~/.cache. Concurrent builders are safe: a cached base model (sft stage with
    train.cache) is built under a file lock on its entry (the other worker waits, then loads
    it) and written atomically with its info.json last (rlcot/stages/sft.py, toyworld/cache.py);
    a tokenizer is written atomically, and two workers that train the same one at once write
    the same bytes (sentencepiece training is deterministic; 0.4 s)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = root / "toycache-session"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module")
def shared_toy_cache(session_toy_cache_dir):
    """The session's toy-world cache (see session_toy_cache_dir) for one test module: for
    tests that may load a tokenizer or base model another module built."""
    yield from _use_toy_cache(session_toy_cache_dir)


@pytest.fixture(scope="module")
def isolated_toy_cache(tmp_path_factory):
    """A fresh toy-world cache (tokenizers, cached base models) for one test module: only for
    tests that need a cache miss (e.g. a study that must train its base model itself)."""
    yield from _use_toy_cache(tmp_path_factory.mktemp("toycache"))
