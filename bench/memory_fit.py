"""Fits rlcot.memory's activation coefficients to XLA's memory analysis of the update step.

Compiles the update step (no allocation: abstract inputs, rlcot.aot) for a grid of small model
configs and batch sizes on one CPU device, with and without remat, and fits the coefficients of
the unit tensors (rlcot.memory.activation_units) and of the float32 gradient copies to the
compiled programs' temporary bytes by non-negative least squares. Prints the coefficients to
paste into rlcot/memory.py and each point's ratio.

    python bench/memory_fit.py            # about 2 min on 2 CPU cores
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls

from rlcot import aot, memory
from rlcot.models.presets import get_config
from rlcot.rl.state import UpdateConfig

UNITS = ("scores", "mlp", "embed", "qkv", "logits", "sandwich", "local")
SAVED_UNITS = ("scores", "mlp", "embed", "qkv", "sandwich", "local")
# (name, config overrides, rows, length): each dimension varied on its own around `tiny`.
GRID = [("base", {}, 16, 128), ("rows32", {}, 32, 128), ("len256", {}, 16, 256),
        ("len64", {}, 16, 64), ("layers4", {"n_layers": 4}, 16, 128),
        ("mlp768", {"mlp_dim": 768}, 16, 128), ("d256", {"d_model": 256}, 16, 128),
        ("heads8", {"n_heads": 8, "n_kv_heads": 8}, 16, 128),
        ("hd64", {"head_dim": 64}, 16, 128), ("vocab4k", {"vocab_size": 4096}, 16, 128),
        ("layers6_len64", {"n_layers": 6}, 8, 64),
        ("gemma3", "tiny-gemma3", 16, 128), ("gemma3_len64", "tiny-gemma3", 16, 64),
        ("gemma3_layers4", ("tiny-gemma3", {"n_layers": 4, "layer_types": ("local",) * 3
                                            + ("global",)}), 16, 128),
        ("gemma3_mlp768", ("tiny-gemma3", {"mlp_dim": 768}), 8, 128)]


def features(cfg, rows, length, remat):
    u = memory.activation_units(cfg, rows, length, logprob_chunk=512)
    saved = [cfg.n_layers * u[k] for k in SAVED_UNITS]
    work = [u[k] for k in UNITS]
    grads = cfg.num_params() * 4
    if remat:
        return [cfg.n_layers * u["embed"], cfg.n_layers * u["sandwich"]] + work + [grads]
    return saved + work + [grads]


def main() -> None:
    base = get_config("tiny")
    for remat in (False, True):
        X, y, names = [], [], []
        for name, kw, rows, length in GRID:
            if isinstance(kw, str):
                kw = (kw, {})
            cfg = (get_config(kw[0], **kw[1]) if isinstance(kw, tuple) else base.replace(**kw))
            compiled = aot.lower_update(cfg, UpdateConfig(remat=remat),
                                        aot.UpdateShapes(rows, length), reference=False).compile()
            temp = aot.memory_per_device(compiled)["temp"]
            X.append(features(cfg, rows, length, remat))
            y.append(temp)
            names.append(name)
        X, y = np.asarray(X, float), np.asarray(y, float)
        # Relative error: scale every row by its target.
        coef, _ = nnls(X / y[:, None], np.ones_like(y))
        pred = X @ coef
        labels = ((["saved_embed", "saved_sandwich"] if remat
                   else [f"saved_{k}" for k in SAVED_UNITS])
                  + [f"work_{k}" for k in UNITS] + ["grads"])
        print(f"remat={remat}: " + ", ".join(f"{l}={c:.2f}" for l, c in zip(labels, coef)))
        for n, p, t in zip(names, pred, y):
            print(f"  {n:<14} temp {t / 2**20:8.2f} MiB  fit {p / 2**20:8.2f} MiB  "
                  f"ratio {p / t:.3f}")


if __name__ == "__main__":
    main()
