"""rlcot: reinforcement learning on chain-of-thought in JAX.

Importing the package is cheap: submodules (models, sampling, rewards, rl, data, ...) are
imported only when used, so a reward unit test never pulls in the model stack.
"""

__version__ = "0.1.0"
