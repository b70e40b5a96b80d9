"""Chat templates: render shipped Jinja templates as transformers does, and built-ins per family."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

FAMILIES = ("chatml", "llama3", "gemma", "plain")

# Built-in templates for tokenizers that ship none. Each matches the real template of its
# family on plain system/user/assistant messages (no tools):
# - chatml: Qwen2.5, Qwen3 (without <think> handling) and SmolLM2. Qwen2.5 and SmolLM2 write
#   a default system prompt when the conversation has none; pass it as `default_system`.
# - llama3: Meta-Llama-3-8B-Instruct. Llama 3.1+ templates also add a "Cutting Knowledge Date"
#   system preamble; use the shipped template for those.
# - gemma: Gemma 3 (Gemma 2 raises on a system message instead of folding it into the first
#   user turn).
# - plain: role-marked lines for toy tokenizers without special tokens.
_CHATML = (
    "{%- if default_system is defined and default_system and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)
_LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
_GEMMA = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)
_PLAIN = (
    "{%- for message in messages %}"
    "{{ message['role'] | capitalize + ': ' + message['content'] + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ 'Assistant:' }}{%- endif %}"
)
BUILTIN_TEMPLATES = {"chatml": _CHATML, "llama3": _LLAMA3, "gemma": _GEMMA, "plain": _PLAIN}

# The piece that marks each family's turns, used to guess the family of a tokenizer.
_FAMILY_MARKERS = (("chatml", "<|im_start|>"), ("llama3", "<|start_header_id|>"), ("gemma", "<start_of_turn>"))


def builtin_chat_template(family: str) -> str:
    if family not in BUILTIN_TEMPLATES:
        raise ValueError(f"no built-in chat template for family {family!r}; known: {sorted(BUILTIN_TEMPLATES)}")
    return BUILTIN_TEMPLATES[family]


def detect_family(template: str | None, piece_to_id: Callable[[str], int | None]) -> str:
    """The chat family: from the turn marker the template writes, else the one the vocabulary has."""
    for family, marker in _FAMILY_MARKERS:
        if template is not None and marker in template:
            return family
    if template is None:
        for family, marker in _FAMILY_MARKERS:
            if piece_to_id(marker) is not None:
                return family
    return "plain"


def _raise_exception(message: str) -> None:
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes HTML characters; chat templates expect plain JSON.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=32)
def _compile(template: str):
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Generation(jinja2.ext.Extension):
        # `{% generation %}...{% endgeneration %}` marks assistant text for transformers' loss
        # masks; rendering only needs the body.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    **variables: Any,
) -> str:
    """Renders a chat template the way transformers' `apply_chat_template(tokenize=False)` does.

    Sandboxed Jinja with trim_blocks/lstrip_blocks, `raise_exception`, `strftime_now` and a
    plain-JSON `tojson`; `variables` (bos_token, eos_token, enable_thinking, ...) are globals
    of the render.
    """
    if not messages:
        raise ValueError("apply_chat_template needs at least one message, got none")
    for k, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ValueError(f"message {k} must be a mapping with 'role' and 'content', got {m!r}")
    return _compile(template).render(
        messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt, **variables
    )
