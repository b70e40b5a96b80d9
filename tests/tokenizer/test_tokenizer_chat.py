"""Chat templates: the GGUF's shipped template against transformers' goldens, and the built-ins."""

from __future__ import annotations

import jinja2
import pytest

from rlcot.tokenizer import builtin_chat_template, render_chat_template

USER = [{"role": "user", "content": "What is 2+2?"}]
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": " Hello! "},
    {"role": "user", "content": "Add 12 and 30."},
]


def test_gguf_template_matches_transformers_golden(smollm2, golden):
    for item in golden["chat"]:
        text = smollm2.apply_chat_template(item["messages"], add_generation_prompt=item["add_generation_prompt"])
        assert text == item["text"]
        assert smollm2.encode(text) == item["ids"]
    # SmolLM2's template writes its default system prompt when none is given.
    assert golden["chat"][0]["text"] == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_builtin_chatml_matches_smollm2_and_qwen25():
    chatml = builtin_chat_template("chatml")
    smol_system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    # SmolLM2's own template (the GGUF's), rendered by hand for USER:
    expected = (
        f"<|im_start|>system\n{smol_system}<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_chat_template(chatml, USER, default_system=smol_system) == expected
    # Qwen2.5-Instruct's template writes "You are Qwen, created by Alibaba Cloud. You are a
    # helpful assistant." when no system message is given, and keeps a given one verbatim.
    qwen_system = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    assert render_chat_template(chatml, USER, default_system=qwen_system, add_generation_prompt=False) == (
        f"<|im_start|>system\n{qwen_system}<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    )
    assert render_chat_template(chatml, CONVERSATION, default_system=qwen_system) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n Hello! <|im_end|>\n<|im_start|>user\nAdd 12 and 30.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # Without a default system prompt (Qwen3): no system turn.
    assert render_chat_template(chatml, USER) == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"


def test_builtin_llama3():
    # Meta-Llama-3-Instruct: BOS once, header per turn, content trimmed, <|eot_id|> closes it.
    text = render_chat_template(builtin_chat_template("llama3"), CONVERSATION, bos_token="<|begin_of_text|>")
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nAdd 12 and 30.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_builtin_gemma():
    # Gemma 3: the system message is folded into the first user turn; "assistant" is "model".
    text = render_chat_template(builtin_chat_template("gemma"), CONVERSATION, bos_token="<bos>")
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nAdd 12 and 30.<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    with pytest.raises(jinja2.TemplateError, match="must alternate"):
        render_chat_template(builtin_chat_template("gemma"), [*USER, *USER], bos_token="<bos>")


def test_builtin_plain():
    text = render_chat_template(builtin_chat_template("plain"), CONVERSATION)
    assert text == "System: Be brief.\nUser: Hi\nAssistant:  Hello! \nUser: Add 12 and 30.\nAssistant:"
    assert render_chat_template(builtin_chat_template("plain"), USER, add_generation_prompt=False) == (
        "User: What is 2+2?\n"
    )


def test_jinja_environment_like_transformers():
    # trim_blocks/lstrip_blocks: the newline after a block tag and the indent before one vanish
    # (plain Jinja would give '\n    "é<b>"|\n'); tojson keeps non-ASCII and HTML characters.
    template = "{% for m in messages %}\n    {% if true %}{{ m['content'] | tojson }}|{% endif %}\n{% endfor %}"
    assert render_chat_template(template, [{"role": "user", "content": "é<b>"}]) == '"é<b>"|'
    with pytest.raises(jinja2.TemplateError, match="no system"):
        render_chat_template("{{ raise_exception('no system') }}", USER)
    year = render_chat_template("{{ strftime_now('%Y') }}", USER)
    assert year.isdigit() and len(year) == 4
    # loop controls and the {% generation %} tag some templates use
    template = (
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
        "{% generation %}{{ m['content'] }}{% endgeneration %}{% endfor %}"
    )
    assert render_chat_template(template, CONVERSATION) == "Be brief."
    # The sandbox refuses attribute access into Python internals.
    with pytest.raises(jinja2.exceptions.SecurityError):
        render_chat_template("{{ messages.__class__.__mro__ }}", USER)
    with pytest.raises(ValueError, match="'role' and 'content'"):
        render_chat_template(builtin_chat_template("plain"), [{"content": "x"}])
    with pytest.raises(ValueError, match="at least one message"):
        render_chat_template(builtin_chat_template("plain"), [])
    with pytest.raises(ValueError, match="no built-in chat template"):
        builtin_chat_template("vicuna")


def test_template_kwargs_reach_the_template(smollm2):
    template = "{% if enable_thinking is defined and not enable_thinking %}no-think{% endif %}{{ eos_token }}"
    assert render_chat_template(template, USER, enable_thinking=False, eos_token="<e>") == "no-think<e>"
    # The tokenizer passes its own special token strings.
    assert smollm2._special_strings == {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>"}
