"""Verifiable rewards: one batch signature, a name -> reward registry, a safe worker pool.

Importing this package is cheap; the names below load their module on first use.
"""

import importlib

_LAZY = {
    "RewardInput": "base", "RewardOutput": "base", "REWARDS": "registry",
    "RewardCombiner": "registry", "CombinedRewards": "registry", "parse_reward_spec": "registry",
    "RewardPool": "pool", "SandboxLimits": "sandbox",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"rlcot.rewards.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'rlcot.rewards' has no attribute {name!r}")
