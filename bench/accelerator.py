"""One command for an accelerator: decode throughput against the HBM roofline, and update MFU.

    python bench/accelerator.py                  # one GPU or TPU host, under 8 minutes on one H200
    python bench/accelerator.py --smoke          # CPU, a tiny model, seconds (what the tests run)

Per model configuration (--models; default Qwen2.5-0.5B and 1.5B shapes with random weights):

- decode tokens/s at each batch size of --batches (default 1, 16, 256): greedy sampling with
  rlcot's Sampler from --prompt-len random prompt tokens, weights, activations and KV cache in
  --dtype (bfloat16). One decode step's time is the difference of two generate calls of the
  same compiled loop (--new-tokens new tokens, and the fewest new tokens in the same length
  bucket), divided by the difference in steps: prefill and dispatch cancel out. decode tok/s
  = batch / step time.
- the fraction of the HBM roofline: (bytes a decode step must read: the weights it multiplies,
  i.e. the non-embedding parameters plus the V x d unembedding, and the KV cache of the tokens
  it attends, on average over the measured steps) / step time / peak HBM bandwidth. The peak
  comes from --peak-gbps or bench/sampling.py's table of known devices (H200 4.8 TB/s, H100 SXM
  3.35 TB/s, A100 80GB 2.0 TB/s, TPU v5e 0.82 TB/s, v5p 2.76 TB/s, ...) matched on device_kind.
- the update step's model FLOPs utilisation, measured by bench/update.py's functions (random
  tokens, PPO-clip, one AdamW step over --update-size rows:seq:micro_batches, compute in
  --dtype, float32 parameters and optimizer state, decoder layers rematerialised; the PaLM FLOP
  count, its peak table).

Compile time is excluded everywhere and reported. Results go to --out (default $OUT, else
./bench_accelerator): accelerator.json and accelerator.md, rewritten after each measurement so
a run cut short keeps what it measured; measurements that would start after --budget-s seconds
are skipped and marked so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="qwen2.5-0.5b,qwen2.5-1.5b", help="model presets")
    p.add_argument("--batches", default="1,16,256", help="decode batch sizes")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=192)
    p.add_argument("--dtype", default="bfloat16", help="weights/activations/KV cache of decoding; "
                                                       "compute dtype of the update")
    p.add_argument("--update-size", default="64:1024:8", help="rows:seq:micro_batches ('' skips)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--peak-gbps", type=float, default=None, help="HBM GB/s of one device")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense TFLOP/s of one device")
    p.add_argument("--budget-s", type=float, default=360.0,
                   help="start no measurement after this many seconds")
    p.add_argument("--out", default=None, help="output directory (default $OUT)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny model, float32, small batches and sizes: checks the script on CPU")
    args = p.parse_args(argv)
    if args.smoke:
        args.models, args.batches, args.prompt_len = "tiny", "2", 8
        args.dtype, args.update_size, args.repeats = "float32", "4:64:2", 2
    args.batch_list = [int(b) for b in args.batches.split(",")]
    if args.prompt_len < 1 or args.new_tokens < 2 or min(args.batch_list) < 1:
        p.error("need --prompt-len >= 1, --new-tokens >= 2 and batch sizes >= 1")
    if args.update_size and len(args.update_size.split(":")) != 3:
        p.error(f"--update-size {args.update_size!r} must be rows:seq:micro_batches")
    return args


ARGS = parse() if __name__ == "__main__" else parse([])

sys.path.insert(0, str(BENCH))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import sampling as sampling_bench  # noqa: E402  (bench/sampling.py: peak HBM bandwidths)
import update as update_bench  # noqa: E402  (bench/update.py: the update step and its MFU)

from rlcot.models import presets  # noqa: E402
from rlcot.models import transformer as tr  # noqa: E402
from rlcot.models.config import ModelConfig  # noqa: E402
from rlcot.sampling import Sampler, SamplingSpec  # noqa: E402
from rlcot.sampling.spec import bucket  # noqa: E402


def peak_gbps(kind: str) -> float | None:
    """Peak HBM GB/s of one device: --peak-gbps, else the longest known name in device_kind."""
    if ARGS.peak_gbps:
        return ARGS.peak_gbps
    table = sampling_bench.PEAK_GBPS
    for name in sorted(table, key=len, reverse=True):
        if name.lower() in kind.lower():
            return float(table[name])
    return None


def short_tokens(new_tokens: int) -> int:
    """The fewest new tokens whose generation length bucket is that of `new_tokens` (the
    Sampler compiles one loop per bucket and takes max_new_tokens as an argument)."""
    target = bucket(new_tokens, 16)
    return next(n for n in range(1, new_tokens + 1) if bucket(n, 16) == target)


def decode_read_bytes(cfg: ModelConfig, batch: int, attended: float) -> float:
    """Bytes one decode step must read: the matrices it multiplies (every non-embedding weight
    and the V x d unembedding, not the embedding rows it looks up) and the K and V of the
    `attended` tokens of each row."""
    itemsize = jnp.dtype(cfg.param_dtype).itemsize
    weights = (cfg.num_params(include_embeddings=False) + cfg.vocab_size * cfg.d_model) * itemsize
    kv = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * jnp.dtype(cfg.dtype).itemsize
    return weights + kv * batch * attended


def timed_generate(sampler: Sampler, toks: np.ndarray, lens: np.ndarray,
                   spec: SamplingSpec) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = sampler.generate(toks, lens, jax.random.key(0), 1, spec)
    jax.block_until_ready(out.tokens_NxT)
    return time.perf_counter() - t0, out


def decode_rows(name: str, peak: float | None) -> None:
    """Appends one row per batch size to STATE['decode'] (written after each)."""
    cfg = presets.get_config(name, dtype=ARGS.dtype, param_dtype=ARGS.dtype)
    params = tr.init_params(cfg, seed=0)[1]
    sampler = Sampler(cfg, params)
    P, N = ARGS.prompt_len, ARGS.new_tokens
    n_short = short_tokens(N)
    rows = STATE["decode"]
    for B in ARGS.batch_list:
        if over_budget():
            rows.append({"model": name, "batch": B, "skipped": "time budget"})
            continue
        rng = np.random.default_rng(B)
        toks = rng.integers(0, cfg.vocab_size, (B, P), dtype=np.int32)
        lens = np.full((B,), P, np.int32)
        full = SamplingSpec(max_new_tokens=N, greedy=True)
        short = SamplingSpec(max_new_tokens=n_short, greedy=True)
        first, out = timed_generate(sampler, toks, lens, full)
        compile_s = out.stats["compile_s"]
        if int(out.stats["steps"]) < N or out.lengths_N.min() < N:  # no stop ids: all N tokens
            raise RuntimeError(f"{name} B={B}: generated {int(out.lengths_N.min())} of {N} tokens")
        timed_generate(sampler, toks, lens, short)
        t_full = min(timed_generate(sampler, toks, lens, full)[0] for _ in range(ARGS.repeats))
        t_short = min(timed_generate(sampler, toks, lens, short)[0] for _ in range(ARGS.repeats))
        step_s = (t_full - t_short) / (N - n_short)
        # Steps n_short+1 .. N attend P + n_short .. P + N - 1 tokens: their mean.
        attended = P + (n_short + N - 1) / 2
        read = decode_read_bytes(cfg, B, attended)
        row = {"model": name, "batch": B, "prompt": P, "new_tokens": N, "compile_s": compile_s,
               "generate_s": t_full, "generate_short_s": t_short,
               "read_mb_per_step": read / 1e6}
        if step_s <= 0:  # the two calls' difference drowned in noise (a busy CPU, a tiny model)
            row.update(step_ms=None, decode_tok_s=None, gb_s=None, roofline=None)
            print(f"decode {name} B={B}: not resolved ({t_full:.4f} s for {N} new tokens, "
                  f"{t_short:.4f} s for {n_short})", flush=True)
        else:
            row.update(step_ms=step_s * 1e3, decode_tok_s=B / step_s, gb_s=read / step_s / 1e9,
                       roofline=None if peak is None else read / step_s / 1e9 / peak)
            print(f"decode {name} B={B}: {row['step_ms']:.2f} ms/step, "
                  f"{row['decode_tok_s']:.0f} tok/s, {row['gb_s']:.0f} GB/s "
                  f"(compile {compile_s:.1f} s)", flush=True)
        rows.append(row)
        write()


def update_row(name: str) -> dict[str, Any]:
    rows, seq, micro = (int(x) for x in ARGS.update_size.split(":"))
    if over_budget():
        return {"model": name, "skipped": "time budget"}
    size = update_bench.Size(name, rows, seq, micro)
    # Full rows (no padding: nothing to pack), so tokens/s counts every position.
    full = update_bench.make_rows(size, presets.get_config(name).vocab_size,
                                  np.random.default_rng(0))
    r = update_bench.jax_update(size, "none", full)
    flops = update_bench.model_flops_per_token(r["cfg"], seq) * r["tok_s"]
    peak, _ = update_bench.peak_flops()
    row = {"model": name, "rows": rows, "seq": seq, "micro_batches": micro,
           "compile_s": r["compile_s"], "step_s": r["step_s"], "tok_s": r["tok_s"],
           "model_tflops": flops / 1e12, "mfu": None if peak is None else flops / peak}
    print(f"update {name} {rows}x{seq}/{micro}: {r['step_s']:.3f} s, {r['tok_s']:,.0f} tok/s, "
          f"{flops / 1e12:.3g} TFLOP/s (compile {r['compile_s']:.1f} s)", flush=True)
    return row


STATE: dict[str, Any] = {"decode": [], "update": []}
T0 = time.perf_counter()


def over_budget() -> bool:
    return time.perf_counter() - T0 > ARGS.budget_s


def out_dir() -> Path:
    return Path(ARGS.out or os.environ.get("OUT") or "bench_accelerator")


def pct(x: float | None) -> str:
    return "n/a (unknown peak)" if x is None else f"{100 * x:.1f}%"


def markdown() -> str:
    s = STATE
    lines = [f"{s['device_count']} x {s['device_kind']}, jax {s['jax']}, {s['dtype']}; peak HBM "
             f"{s['peak_gbps'] or 'unknown'} GB/s, peak {s['peak_tflops'] or 'unknown'} "
             f"TFLOP/s per device; {s['wall_s']:.0f} s in all", "",
             "| model | batch | decode step (ms) | decode tok/s | read / step (MB) | GB/s | "
             "HBM roofline | compile s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in s["decode"]:
        if "skipped" in r or r["step_ms"] is None:
            why = r.get("skipped", "not resolved: the two calls' difference was noise")
            lines.append(f"| {r['model']} | {r['batch']} | {why} |||||| ")
            continue
        lines.append(f"| {r['model']} | {r['batch']} | {r['step_ms']:.2f} | "
                     f"{r['decode_tok_s']:,.0f} | {r['read_mb_per_step']:,.0f} | "
                     f"{r['gb_s']:,.0f} | {pct(r['roofline'])} | {r['compile_s']:.1f} |")
    lines += ["", "| model | rows x seq | micro | update step (s) | tokens/s | model TFLOP/s | "
              "MFU | compile s |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in s["update"]:
        if "skipped" in r:
            lines.append(f"| {r['model']} | skipped ({r['skipped']}) |||||||")
            continue
        lines.append(f"| {r['model']} | {r['rows']}x{r['seq']} | {r['micro_batches']} | "
                     f"{r['step_s']:.3f} | {r['tok_s']:,.0f} | {r['model_tflops']:.3g} | "
                     f"{pct(r['mfu'])} | {r['compile_s']:.1f} |")
    return "\n".join(lines)


def write() -> None:
    STATE["wall_s"] = time.perf_counter() - T0
    d = out_dir()
    d.mkdir(parents=True, exist_ok=True)
    (d / "accelerator.json").write_text(json.dumps(STATE, indent=1))
    (d / "accelerator.md").write_text(markdown() + "\n")


def main() -> dict[str, Any]:
    kind = jax.devices()[0].device_kind
    update_bench.ARGS = update_bench.parse(
        ["--dtype", ARGS.dtype if not ARGS.smoke else "float32", "--param-dtype", "float32",
         "--repeats", str(ARGS.repeats), "--no-torch", "--mfu"]
        + ([] if ARGS.smoke else ["--remat"])
        + ([] if ARGS.peak_tflops is None else ["--peak-tflops", str(ARGS.peak_tflops)]))
    peak_flops, _ = update_bench.peak_flops()
    peak = peak_gbps(kind)
    STATE.update(device_kind=kind, device_count=jax.device_count(), jax=jax.__version__,
                 dtype=ARGS.dtype, peak_gbps=peak, config=vars(ARGS),
                 peak_tflops=None if peak_flops is None else peak_flops / 1e12 / jax.device_count())
    print(f"{jax.device_count()} x {kind}, jax {jax.__version__}; output {out_dir()}", flush=True)
    for name in ARGS.models.split(","):
        decode_rows(name, peak)
        write()
        if ARGS.update_size:
            STATE["update"].append(update_row(name))
            write()
    write()
    print("\n" + markdown(), flush=True)
    return STATE


if __name__ == "__main__":
    main()
