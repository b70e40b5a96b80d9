"""Data-test fixtures: the shared benchmark copies, one built-data dir, a stand-in tokenizer."""

import os
from pathlib import Path

import pytest


def _shared_data() -> Path:
    env = os.environ.get("RLCOT_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = _shared_data()
    if not (path / "gsm8k" / "train.jsonl").exists():
        pytest.skip(f"benchmark copies not found at {path}")
    return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One TFDS data dir for the session, so each dataset is built once."""
    return tmp_path_factory.mktemp("tfds_data")


class ByteTokenizer:
    """Stand-in for rlcot.tokenizer.Tokenizer: one token per UTF-8 byte, ids shifted by 3."""

    pad_id, bos_id, eos_id = 0, 1, 2

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        return ([self.bos_id] if add_bos else []) + [b + 3 for b in text.encode("utf-8")]

    def decode(self, ids) -> str:
        return bytes(int(i) - 3 for i in ids if int(i) >= 3).decode("utf-8")

    def encode_batch(self, texts, add_bos: bool = False) -> list[list[int]]:
        return [self.encode(t, add_bos) for t in texts]

    add_bos_by_default = True

    def apply_chat_template(self, messages, *, add_generation_prompt: bool = True,
                            **template_kwargs) -> str:
        text = "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages)
        if template_kwargs:
            text = f"<|vars {sorted(template_kwargs.items())}|>" + text
        return text + ("<|assistant|>" if add_generation_prompt else "")


@pytest.fixture(scope="session")
def byte_tokenizer() -> ByteTokenizer:
    return ByteTokenizer()
