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


@pytest.fixture(scope="module")
def isolated_toy_cache(tmp_path_factory):
    """A fresh toy-world cache (tokenizers, cached base models) for one test module."""
    old = os.environ.get("RLCOT_TOYWORLD_CACHE")
    os.environ["RLCOT_TOYWORLD_CACHE"] = str(tmp_path_factory.mktemp("toycache"))
    yield
    if old is None:
        os.environ.pop("RLCOT_TOYWORLD_CACHE", None)
    else:
        os.environ["RLCOT_TOYWORLD_CACHE"] = old
