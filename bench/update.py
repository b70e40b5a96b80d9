"""Update-step throughput: tokens/s of rlcot's jitted RL update, and one PyTorch training step.

    python bench/update.py                      # tiny 64x256, smollm2-135m 16x256 (CPU, minutes)
    python bench/update.py --sizes tiny:64:256:1 --repeats 3 --no-torch
    python bench/update.py --mfu --sizes qwen2.5-0.5b:64:1024:8 --dtype bfloat16 --remat
                                                # accelerators: model FLOPs utilisation
    python bench/update.py --sizes smollm2-135m:64:224:4 --ragged 96 --packing none,pack,trim
                                                # rollout-like rows, packed vs padded

Each size is preset:rows:seq:micro_batches. Random-init weights, random tokens (a quarter of
each row is prompt, the rest completion, no padding), random advantages and old log-probs near
the current ones, PPO-clip with token-mean aggregation, one epoch, one minibatch (one optimizer
step, AdamW), `micro` gradient-accumulation passes. tokens/s = rows * seq / wall time of one
update call (all positions are processed by the forward and backward passes; real tokens only
with --ragged). Compile time is
measured separately (ahead-of-time lower + compile) and excluded. Calls are repeated and the
best is kept (the machine may be shared).

--ragged B: rows laid out as a rollout batch instead: prompts of ~2/3 of the bucket B (uniform
in [0.42 B, 0.94 B)) left-padded to B, completions of ~0.39 of the budget T = seq - B (normal,
sd 0.23 T, clipped to [5, T]) right-padded to T; the loss on completion tokens. With
B = 96 and seq = 224 that is the GRPO case of 64-token prompts and 50-token completions in 128
slots. Each mode of --packing (learner.packing) is timed on the same rows; tokens/s then counts
REAL tokens (valid prompt + completion tokens) per second, for every mode and for the peer.

Peer figure: the same architecture in transformers (LlamaForCausalLM, float32, random init)
on the same rows x seq with the same micro-batching, cross-entropy on the loss tokens
(attention mask and positions as ours on ragged rows), backward and AdamW: one training step,
timed the same way; "vs torch" = our tokens/s / theirs.

--mfu (accelerators): model FLOPs utilisation = model FLOPs per token x tokens/s / peak FLOP/s.
Model FLOPs per token = 6 x (non-embedding parameters + the unembedding matmul, V x d) +
12 x layers x heads x head_dim x seq (attention scores and values, forward and backward, no
causal discount: the PaLM convention); rematerialisation is not counted. Peak: --peak-tflops,
or a table of dense bf16 peaks of known devices matched against jax's device_kind. With more
than one device the batch is sharded over an fsdp mesh of all devices.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

# Dense bf16 peak TFLOP/s (vendor data sheets), matched against jax's device_kind; the longest
# matching name wins ("H100 PCIe" before "H100").
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "H800": 989.0,
               "A100": 312.0, "L4": 121.0, "TPU v4": 275.0, "TPU v5 lite": 197.0,
               "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v6 lite": 918.0, "TPU v6e": 918.0}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="tiny:64:256:1,smollm2-135m:16:256:4",
                   help="comma-separated preset:rows:seq:micro_batches")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--dtype", default="float32", help="activation/compute dtype")
    p.add_argument("--param-dtype", default="float32")
    p.add_argument("--chunk", type=int, default=256, help="sequence positions per logits chunk")
    p.add_argument("--remat", action="store_true", help="rematerialise decoder layers")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch peer step")
    p.add_argument("--mfu", action="store_true", help="report model FLOPs utilisation")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak TFLOP/s of one device (default: looked up from device_kind)")
    p.add_argument("--ragged", type=int, default=None, metavar="BUCKET",
                   help="rollout-like ragged rows with this prompt bucket (see above)")
    p.add_argument("--packing", default="none",
                   help="comma-separated learner.packing modes to time (none, pack, trim)")
    p.add_argument("--xla-cpu-tuned", action="store_true",
                   help="XLA's Eigen dots instead of YNNPACK fusions on CPU (set before JAX starts)")
    return p.parse_args(argv)


# Imported (bench/accelerator.py), the defaults; the importer may replace ARGS with parse([...]).
ARGS = parse() if __name__ == "__main__" else parse([])
if ARGS.xla_cpu_tuned:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_experimental_ynn_fusion_type=").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from rlcot import sharding  # noqa: E402
from rlcot.models import presets  # noqa: E402
from rlcot.models import transformer as tr  # noqa: E402
from rlcot.models.config import ModelConfig  # noqa: E402
from rlcot.rl.batch import UpdateBatch  # noqa: E402
from rlcot.rl.logprobs import make_logprob_fn  # noqa: E402
from rlcot.rl.optim import OptimizerConfig  # noqa: E402
from rlcot.rl.state import UpdateConfig, init_train_state  # noqa: E402
from rlcot.rl.update import make_update_step  # noqa: E402


@dataclasses.dataclass
class Size:
    preset: str
    rows: int
    seq: int
    micro: int


def parse_sizes(text: str) -> list[Size]:
    out = []
    for item in text.split(","):
        parts = item.split(":")
        if len(parts) != 4:
            raise SystemExit(f"size {item!r} must be preset:rows:seq:micro_batches")
        out.append(Size(parts[0], *(int(x) for x in parts[1:])))
    return out


def model_flops_per_token(cfg: ModelConfig, seq: int) -> float:
    dense = cfg.num_params(include_embeddings=False) + cfg.vocab_size * cfg.d_model
    attention = 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq
    return 6.0 * dense + attention


def peak_flops() -> tuple[float | None, str]:
    """Peak FLOP/s of all devices together, and the device kind."""
    kind = jax.devices()[0].device_kind
    if ARGS.peak_tflops is not None:
        return ARGS.peak_tflops * 1e12 * jax.device_count(), f"{kind} (--peak-tflops)"
    for name in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if name.lower() in kind.lower():
            return PEAK_TFLOPS[name] * 1e12 * jax.device_count(), kind
    return None, kind


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def make_rows(size: Size, vocab: int, rng: np.random.Generator):
    """(tokens, positions, valid, loss mask) [rows, seq]: full rows (a quarter prompt) or, with
    --ragged, rollout-like rows (see the module docstring)."""
    N, L = size.rows, size.seq
    tokens = rng.integers(0, vocab, (N, L)).astype(np.int32)
    if ARGS.ragged is None:
        valid = np.ones((N, L), bool)
        mask = np.broadcast_to(np.arange(L)[None, :] >= L // 4, (N, L))
    else:
        B, T = ARGS.ragged, L - ARGS.ragged
        if not 0 < B < L:
            raise SystemExit(f"--ragged {B} must be inside the sequence length {L}")
        prompt = rng.integers(int(0.42 * B), int(0.94 * B), N).clip(1, B)
        completion = np.clip(rng.normal(0.39 * T, 0.23 * T, N).astype(int), min(5, T), T)
        col = np.arange(L)[None, :]
        valid = (col >= (B - prompt)[:, None]) & (col < (B + completion)[:, None])
        mask = (col >= B) & valid
    return tokens, np.asarray(tr.positions_from_mask(valid)), valid, mask.astype(np.float32)


def jax_update(size: Size, packing: str, rows) -> dict:
    cfg = presets.get_config(size.preset, dtype=ARGS.dtype, param_dtype=ARGS.param_dtype)
    mesh = sharding.make_mesh(1, -1, 1) if jax.device_count() > 1 else None
    graphdef, params = tr.init_params(cfg, seed=0, mesh=mesh)
    ucfg = UpdateConfig(optimizer=OptimizerConfig(lr=1e-6), micro_batches=size.micro,
                        logprob_chunk=ARGS.chunk, remat=ARGS.remat, shuffle=False,
                        packing=packing)
    state = init_train_state(ucfg, params, mesh=mesh)

    rng = np.random.default_rng(1)
    N, L = size.rows, size.seq
    tokens, positions, valid, mask = rows
    real = int(valid.sum())
    old_fn = make_logprob_fn(graphdef, params, mesh=mesh, chunk=ARGS.chunk, packing=packing)
    logp = jax.block_until_ready(old_fn(params, tokens, positions, valid, mask))
    old_s = best_time(lambda: jax.block_until_ready(old_fn(params, tokens, positions, valid,
                                                           mask)), ARGS.repeats)
    adv = jnp.asarray(rng.normal(size=(N, 1)), jnp.float32) * mask
    noise = jnp.asarray(rng.normal(size=(N, L)) * 0.05, jnp.float32)
    batch = UpdateBatch(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(valid),
                        jnp.asarray(mask), adv, (logp + noise) * mask)
    if mesh is not None:
        batch = jax.device_put(batch, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
            ("data", "fsdp"))))

    update = make_update_step(graphdef, ucfg, state, mesh=mesh)
    key = jax.random.key(0)
    pack = update.plan(batch, key)   # host planning is part of every call's time below
    t = time.perf_counter()
    compiled = update.jitted.lower(state, batch, key, pack).compile()
    compile_s = time.perf_counter() - t
    box = {"state": state}

    def run():
        box["state"], metrics = compiled(box["state"], batch, key, update.plan(batch, key))
        jax.block_until_ready(metrics)
        box["metrics"] = metrics

    run()   # first call: allocation and warm-up
    step_s = best_time(run, ARGS.repeats)
    metrics = box["metrics"]
    loss = float(metrics["loss"])
    if not np.isfinite(loss):
        raise SystemExit(f"{size.preset}: non-finite loss {loss}")
    return dict(cfg=cfg, compile_s=compile_s, step_s=step_s, tok_s=real / step_s,
                old_tok_s=real / old_s, loss=loss,
                slots_per_real=float(metrics["update/slots_per_real_token"]))


def torch_step(cfg: ModelConfig, size: Size, rows) -> float:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    if cfg.family != "llama":
        raise SystemExit(f"the PyTorch peer covers llama-family presets, not {cfg.family}")
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    hf = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
                     intermediate_size=cfg.mlp_dim, num_hidden_layers=cfg.n_layers,
                     num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
                     head_dim=cfg.head_dim, rope_theta=cfg.rope_theta,
                     rms_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings,
                     max_position_embeddings=cfg.max_position)
    model = LlamaForCausalLM(hf).float().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    tokens, positions, valid, mask = (torch.as_tensor(np.array(a)) for a in rows)
    labels = torch.where(torch.as_tensor(np.asarray(mask) > 0), tokens.long(), -100)
    micro = list(zip(*(x.chunk(size.micro) for x in (tokens.long(), positions.long(),
                                                      valid.long(), labels))))

    def step():
        opt.zero_grad(set_to_none=True)
        for x, pos, att, lab in micro:
            out = model(input_ids=x, position_ids=pos, attention_mask=att, labels=lab)
            (out.loss / size.micro).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    step()
    return best_time(step, ARGS.repeats)


def main() -> None:
    out = []
    peak, kind = peak_flops() if ARGS.mfu else (None, jax.devices()[0].device_kind)
    modes = ARGS.packing.split(",")
    for size in parse_sizes(ARGS.sizes):
        cfg = presets.get_config(size.preset, dtype=ARGS.dtype, param_dtype=ARGS.param_dtype)
        rows = make_rows(size, cfg.vocab_size, np.random.default_rng(0))
        real = int(rows[2].sum())
        tok_t = None
        if not ARGS.no_torch:
            tok_t = real / torch_step(cfg, size, rows)
        for packing in modes:
            r = jax_update(size, packing, rows)
            row = [size.preset, f"{cfg.num_params() / 1e6:.1f}M", f"{size.rows}x{size.seq}",
                   str(size.micro), packing, f"{size.rows * size.seq / real:.2f}",
                   f"{r['slots_per_real']:.2f}", f"{r['compile_s']:.1f}", f"{r['step_s']:.2f}",
                   f"{r['tok_s']:,.0f}", f"{r['old_tok_s']:,.0f}"]
            if tok_t is not None:
                row += [f"{real / tok_t:.2f}", f"{tok_t:,.0f}", f"{r['tok_s'] / tok_t:.2f}"]
            if ARGS.mfu:
                achieved = model_flops_per_token(cfg, size.seq) * r["tok_s"]
                row += [f"{achieved / 1e12:.3g}",
                        "n/a (unknown peak)" if peak is None else f"{100 * achieved / peak:.1f}%"]
            out.append(row)
            print(" | ".join(row), flush=True)
    head = ["model", "params", "rows x seq", "micro", "packing", "padded/real",
            "slots/real", "compile s", "step s", "real tokens/s", "old-logp real tokens/s"]
    if not ARGS.no_torch:
        head += ["torch step s", "torch real tokens/s", "vs torch"]
    if ARGS.mfu:
        head += ["model TFLOP/s", "MFU"]
    print(f"\n{jax.device_count()} x {kind}, jax {jax.__version__}, dtype {ARGS.dtype}, "
          f"params {ARGS.param_dtype}, remat {ARGS.remat}, ragged {ARGS.ragged}, "
          f"best of {ARGS.repeats}\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in out:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
