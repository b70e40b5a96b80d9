"""`python -m rlcot.main export --workdir DIR [--stage NAME] --out HF_DIR`: a stage's policy
as a Hugging Face directory (config.json, safetensors, tokenizer files) that transformers
loads."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


def export(workdir: str | Path, out: str | Path, *, stage: str | None = None,
           dtype: str = "float32") -> Path:
    """Writes the policy of `stage` (default: the study's last stage; `workdir` may also be a
    stage directory) to `out`. Sentencepiece tokenizers are written as tokenizer.model,
    tokenizer.json-based ones are copied from where the model came from. A stage that trained
    LoRA adapters is written merged into its base, and its adapters also in PEFT's format in
    `out`/adapter (for the base exported the same way)."""
    from rlcot import sources
    from rlcot.models.hf import save_hf
    from rlcot.tokenizer.spm import SentencePieceTokenizer
    stage_dir = sources.study_stage_dir(Path(workdir), stage)
    if not sources.is_finished(stage_dir):
        raise FileNotFoundError(f"{stage_dir} is not a finished stage; nothing to export")
    resolver = sources.Resolver(study_dir=Path(workdir))
    model = resolver.load(f"workdir:{stage_dir}")
    out = Path(out)
    tok_dir = None
    ref = sources.card_tokenizer_ref(stage_dir)
    if ref is not None and Path(ref).is_dir():
        tok_dir = ref
    save_hf(out, model.cfg, model.params, dtype=dtype, tokenizer_dir=tok_dir)
    tok = model.tokenizer
    if isinstance(tok, SentencePieceTokenizer):
        tok.save(out / "tokenizer.model")
    elif ref is not None and Path(ref).is_file() and ref.endswith(".gguf"):
        # A GGUF's vocabulary as a tokenizers JSON file (rlcot's GGUF tokenizer is one).
        tok.backend.save(str(out / "tokenizer.json"))
    elif tok_dir is None and ref is not None and Path(ref).is_file():
        shutil.copy(ref, out / Path(ref).name)
    card = sources.read_model_card(stage_dir)
    if "lora" in card:
        from rlcot.models import lora
        cfg, _, adapters = lora.load_adapters(resolver, stage_dir, card)
        lora.save_peft(out / "adapter", cfg, adapters, base=card["source"], dtype=dtype)
    log.info("exported %s to %s", stage_dir, out)
    return out
