"""Memory the RL loop keeps between steps, full fine-tuning against LoRA (rlcot.models.lora.
memory_bytes): the README's "LoRA" table. Computed from the configs, nothing is allocated.

    python bench/lora_memory.py                                   # the README's rows
    python bench/lora_memory.py --models qwen2.5-7b --rank 64 --targets q,v --devices 8
"""

from __future__ import annotations

import argparse

from rlcot.models import lora, presets

TOY = dict(n_layers=2, d_model=128, n_heads=4, n_kv_heads=2, head_dim=32, mlp_dim=384,
           max_position=512, vocab_size=384)  # the r1_zero toy base model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="toy,qwen2.5-1.5b,qwen2.5-7b")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--targets", default="q,k,v,o,gate,up,down")
    ap.add_argument("--devices", type=int, default=1, help="FSDP shards: bytes per device")
    args = ap.parse_args()
    cfg = lora.LoraConfig(enabled=True, rank=args.rank, alpha=args.alpha,
                          targets=tuple(args.targets.split(",")))
    print(f"| model | params | adapters | full fine-tuning | LoRA | saved |  "
          f"(per device of {args.devices})\n|---|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        if name == "toy":  # float32, no KL reference (as r1_zero)
            model, reference = presets.get_config("tiny", **TOY), False
        else:  # bfloat16 weights with a KL reference (most GRPO recipes)
            model, reference = presets.get_config(name, param_dtype="bfloat16"), True
        full = lora.memory_bytes(model, None, reference=reference)["total"] / args.devices
        small = lora.memory_bytes(model, cfg, reference=reference)["total"] / args.devices
        n, n_base = lora.adapter_params(cfg, model), model.num_params()
        print(f"| {name} | {n_base / 1e6:.2f}M | {n / 1e3:.1f}K ({100 * n / n_base:.2f}%) | "
              f"{full / 2**20:,.2f} MiB | {small / 2**20:,.2f} MiB | {full / small:.1f}x |")


if __name__ == "__main__":
    main()
