"""RL algorithm pieces as small pure jnp functions in name -> function tables.

Submodules: advantages (GRPO, Dr.GRPO, RLOO, REINFORCE++, Kimi, GAE), kl (k1/k2/k3, placement,
coefficient controllers), losses (PPO-clip, GSPO, policy gradient, Kimi surrogate, value loss,
entropy, TIS), aggregation (global per-token weights), metrics (micro-batch-exact metrics) and
objective (the per-token objective that composes them). The update itself: logprobs (chunked
per-token log-probs and entropies), value (the critic), optim (AdamW + schedules), batch (the
update batch; advantages between rollout and update), state (train state, settings, reference
refresh) and update (the jitted epochs x minibatches x micro-batches step).

Naming: `B` in a `_BxT` suffix is the flattened sequence axis (prompts x samples), `G` samples
per prompt, `T` completion tokens; the update step's `_NxL` arrays are N rows of length L
(prompt + completion), every per-token array aligned with the tokens (see rl.logprobs).
"""
