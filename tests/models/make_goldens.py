"""Regenerates tests/models/golden/*.npz with Hugging Face transformers (PyTorch, CPU).

    python tests/models/make_goldens.py

Needs torch and transformers (`pip install -e .[reference]`). For each family in
golden_specs.FAMILIES it builds the HF model from the config, fills its weights from the fixed
seed (in state-dict order, recorded in the fixture), and stores the fp32 logits of a padded batch.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).parent))
from golden_specs import FAMILIES, make_inputs, make_weights  # noqa: E402

OUT = Path(__file__).parent / "golden"


def main():
    OUT.mkdir(exist_ok=True)
    for family, hf_config in FAMILIES.items():
        config = transformers.AutoConfig.for_model(**hf_config)
        config._attn_implementation = "eager"
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.eval()
        sd = model.state_dict()
        names = [n for n in sd if not (config.tie_word_embeddings and n == "lm_head.weight")]
        specs = [(n, tuple(sd[n].shape)) for n in names]
        weights = make_weights(family, specs)
        missing, unexpected = model.load_state_dict(
            {n: torch.from_numpy(w) for n, w in weights.items()}, strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
        tokens, valid, positions = make_inputs(hf_config["vocab_size"])
        with torch.no_grad():
            out = model(input_ids=torch.from_numpy(tokens).long(),
                        attention_mask=torch.from_numpy(valid).long(),
                        position_ids=torch.from_numpy(positions).long())
        logits = out.logits.float().numpy()
        np.savez_compressed(OUT / f"{family}.npz", logits=logits,
                            specs=json.dumps(specs), hf_config=json.dumps(hf_config),
                            transformers_version=transformers.__version__)
        print(f"{family}: logits {logits.shape}, |logits| max {np.abs(logits).max():.2f}")


if __name__ == "__main__":
    main()
