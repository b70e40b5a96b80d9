"""Decoder-only transformer families (Llama 3, Qwen2.5, Qwen3, Gemma 3, SmolLM2) and their I/O."""
