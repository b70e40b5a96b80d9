"""Fits rlcot.memory's activation coefficients to XLA's memory analysis of the update step.

Compiles the update step (no allocation: abstract inputs, rlcot.aot) for a grid of small model
configs and batch sizes on one device, with and without remat, and fits the coefficients of
the unit tensors (rlcot.memory.activation_units) and of the float32 gradient copies to the
compiled programs' temporary bytes by non-negative least squares. Prints the
`memory.Coefficients(...)` to paste into rlcot/memory.py's COEFFICIENTS and each point's
ratio.

    python bench/memory_fit.py                      # XLA:CPU, about 2 min on 2 CPU cores
    python bench/memory_fit.py --dtype bfloat16     # XLA:CPU's bfloat16 set
    python bench/memory_fit.py --topology v5e-1     # libtpu's compiler, no TPU needed

On a TPU topology the grid's model dimensions are multiples of 128 (TPU tiles pad a tensor's
last dimension to 128 lanes: the tiny presets' 32-wide heads would be counted 4x) and half of
its points compute in bfloat16 (native on TPU; XLA:CPU computes it in float32).
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.optimize import nnls

from rlcot import aot, memory
from rlcot.models.presets import get_config
from rlcot.rl.state import UpdateConfig

UNITS = ("scores", "mlp", "embed", "qkv", "logits", "sandwich", "local")
SAVED_UNITS = ("scores", "mlp", "embed", "qkv", "sandwich", "local")
# (name, config overrides, rows, length): each dimension varied on its own around the base.
CPU_GRID = [("base", {}, 16, 128), ("rows32", {}, 32, 128), ("len256", {}, 16, 256),
            ("len64", {}, 16, 64), ("layers4", {"n_layers": 4}, 16, 128),
            ("mlp768", {"mlp_dim": 768}, 16, 128), ("d256", {"d_model": 256}, 16, 128),
            ("heads8", {"n_heads": 8, "n_kv_heads": 8}, 16, 128),
            ("hd64", {"head_dim": 64}, 16, 128), ("vocab4k", {"vocab_size": 4096}, 16, 128),
            ("layers6_len64", {"n_layers": 6}, 8, 64),
            ("gemma3", "tiny-gemma3", 16, 128), ("gemma3_len64", "tiny-gemma3", 16, 64),
            ("gemma3_layers4", ("tiny-gemma3", {"n_layers": 4, "layer_types": ("local",) * 3
                                                + ("global",)}), 16, 128),
            ("gemma3_mlp768", ("tiny-gemma3", {"mlp_dim": 768}), 8, 128)]
ALIGNED = {"d_model": 512, "head_dim": 128, "mlp_dim": 1536, "vocab_size": 4096}
BF16 = {"dtype": "bfloat16"}
TPU_GRID = [("base", ALIGNED, 16, 256), ("rows32", ALIGNED, 32, 256),
            ("len512", ALIGNED, 16, 512), ("len128", ALIGNED, 16, 128),
            ("layers4", {**ALIGNED, "n_layers": 4}, 16, 256),
            ("mlp3072", {**ALIGNED, "mlp_dim": 3072}, 16, 256),
            ("d1024", {**ALIGNED, "d_model": 1024}, 16, 256),
            ("heads8", {**ALIGNED, "n_heads": 8, "n_kv_heads": 4}, 16, 256),
            ("hd256", {**ALIGNED, "head_dim": 256}, 16, 256),
            ("vocab16k", {**ALIGNED, "vocab_size": 16384}, 16, 256),
            ("bf16", {**ALIGNED, **BF16}, 16, 256), ("bf16_rows32", {**ALIGNED, **BF16}, 32, 256),
            ("bf16_len512", {**ALIGNED, **BF16}, 16, 512),
            ("bf16_layers4", {**ALIGNED, **BF16, "n_layers": 4}, 16, 256),
            ("bf16_mlp3072", {**ALIGNED, **BF16, "mlp_dim": 3072}, 16, 256),
            ("bf16_vocab16k", {**ALIGNED, **BF16, "vocab_size": 16384}, 16, 256),
            ("gemma3", ("tiny-gemma3", {**ALIGNED, "sliding_window": 64}), 16, 256),
            ("gemma3_len512", ("tiny-gemma3", {**ALIGNED, "sliding_window": 64}), 16, 512),
            ("gemma3_bf16", ("tiny-gemma3", {**ALIGNED, **BF16, "sliding_window": 64}), 16, 256),
            ("gemma3_bf16_layers4", ("tiny-gemma3", {**ALIGNED, **BF16, "sliding_window": 64,
                                                     "n_layers": 4, "layer_types": ("local",) * 3
                                                     + ("global",)}), 16, 256)]

# Real models' shapes (vocabularies of 128-262k words, 64- and 256-wide heads) cut to two
# layers, in bfloat16 compute: the regime of the recipes, where the logits chunk dominates.
REAL = [("qwen2.5-0.5b", {}), ("llama-3.2-1b", {}), ("gemma-3-1b", {"layer_types": ("local",
                                                                                   "global")})]
TPU_GRID += [(f"{m}_{rows}x{length}", (m, {**kw, **BF16, "n_layers": 2}), rows, length)
             for m, kw in REAL for rows, length in ((4, 512), (8, 256), (2, 1024))]


def features(cfg, rows, length, remat, platform):
    u = memory.activation_units(cfg, rows, length, logprob_chunk=512, platform=platform)
    saved = [cfg.n_layers * u[k] for k in SAVED_UNITS]
    work = [u[k] for k in UNITS]
    grads = cfg.num_params() * 4
    if remat:
        return [cfg.n_layers * u["embed"], cfg.n_layers * u["sandwich"]] + work + [grads]
    return saved + work + [grads]


def config(kw):
    if isinstance(kw, str):
        return get_config(kw)
    if isinstance(kw, tuple):
        return get_config(kw[0], **kw[1])
    return get_config("tiny", **kw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--topology", default=None,
                    help="a TPU topology (e.g. v5e-1): compile with libtpu's compiler")
    ap.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                    help="one compute dtype for every point (its own coefficient set)")
    args = ap.parse_args()
    if args.topology:
        devices, grid = aot.topology_devices(args.topology)[:1], TPU_GRID
    else:
        import jax
        devices, grid = jax.devices()[:1], CPU_GRID
    platform = devices[0].platform
    mesh = aot.make_mesh(devices, 1, 1, 1)
    points, seen = [], set()
    for name, kw, rows, length in grid:
        cfg = config(kw)
        if args.dtype:
            cfg = cfg.replace(dtype=args.dtype)
        if (cfg, rows, length) not in seen:  # a float32 point made bfloat16 may repeat one
            seen.add((cfg, rows, length))
            points.append((name, cfg, rows, length))
    fitted = {}
    for remat in (False, True):
        X, y, names = [], [], []
        for name, cfg, rows, length in points:
            compiled = aot.lower_update(cfg, UpdateConfig(remat=remat),
                                        aot.UpdateShapes(rows, length), reference=False,
                                        mesh=mesh).compile()
            temp = aot.memory_per_device(compiled)["temp"]
            X.append(features(cfg, rows, length, remat, platform))
            y.append(temp)
            names.append(name)
            print(f"  compiled {name} remat={remat}: temp {temp / 2**20:.2f} MiB", flush=True)
        X, y = np.asarray(X, float), np.asarray(y, float)
        # Relative error: scale every row by its target.
        coef, _ = nnls(X / y[:, None], np.ones_like(y))
        pred = X @ coef
        labels = ((["saved_embed", "saved_sandwich"] if remat
                   else [f"saved_{k}" for k in SAVED_UNITS])
                  + [f"work_{k}" for k in UNITS] + ["grads"])
        fitted[remat] = dict(zip(labels, coef))
        worst = max(abs(p / t - 1) for p, t in zip(pred, y))
        print(f"remat={remat}: worst fitted point {worst:.1%}")
        for n, p, t in zip(names, pred, y):
            print(f"  {n:<20} temp {t / 2**20:9.2f} MiB  fit {p / 2**20:9.2f} MiB  "
                  f"ratio {p / t:.3f}")

    def pick(d, prefix):
        return "{" + ", ".join(f'"{k[len(prefix):]}": {v:.2f}' for k, v in d.items()
                               if k.startswith(prefix) and v > 0.005) + "}"
    f, r = fitted[False], fitted[True]
    key = platform + (f"/{args.dtype}" if args.dtype and args.dtype != "float32" else "")
    print(f'"{key}": memory.Coefficients(\n'
          f'    saved={pick(f, "saved_")},\n    work={pick(f, "work_")},\n'
          f'    remat_saved={pick(r, "saved_")},\n    remat_work={pick(r, "work_")},\n'
          f'    grads={f["grads"]:.2f}, remat_grads={r["grads"]:.2f}, fitted="..."),')


if __name__ == "__main__":
    main()
