"""RL algorithm pieces as small pure jnp functions in name -> function tables.

Submodules: advantages (GRPO, Dr.GRPO, RLOO, REINFORCE++, Kimi, GAE), kl (k1/k2/k3, placement,
coefficient controllers), losses (PPO-clip, GSPO, policy gradient, Kimi surrogate, value loss,
entropy, TIS), aggregation (global per-token weights), metrics (micro-batch-exact metrics) and
objective (the per-token objective that composes them). Naming: `B` in a `_BxT` suffix is the
flattened sequence axis (prompts x samples), `G` samples per prompt, `T` completion tokens.
"""
