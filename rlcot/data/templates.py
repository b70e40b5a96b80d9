"""Prompt templates (R1-Zero, chat, question/answer, raw) with deterministic few-shot examples."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

# DeepSeek-R1 paper, Table 1 ("prompt" is replaced by the question).
R1_ZERO_PREAMBLE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning "
    "process here </think> <answer> answer here </answer>.")
R1_ZERO_TEMPLATE = R1_ZERO_PREAMBLE + " User: {prompt}. Assistant:"

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclasses.dataclass(frozen=True)
class TemplateConfig:
    """How an example becomes a prompt string.

    name: a key of TEMPLATES. instruction: text appended to the question (None: the
    dataset's default, see rlcot.data.registry). system: chat system message; chat_kwargs:
    extra chat-template variables, e.g. (("enable_thinking", False),) for Qwen3 (chat only).
    num_shots / fewshot_seed: k worked examples drawn deterministically from the dataset's
    few-shot split.
    """

    name: str = "r1_zero"
    instruction: str | None = None
    system: str | None = None
    chat_kwargs: tuple[tuple[str, Any], ...] = ()
    num_shots: int = 0
    fewshot_seed: int = 0

    def __post_init__(self):
        if self.name not in TEMPLATES:
            raise ValueError(f"unknown template {self.name!r}; choose from {sorted(TEMPLATES)}")
        if self.num_shots < 0:
            raise ValueError(f"num_shots must be >= 0, got {self.num_shots}")
        if (self.system is not None or self.chat_kwargs) and self.name != "chat":
            raise ValueError(f"system={self.system!r} and chat_kwargs={self.chat_kwargs!r} are "
                             f"only used by the 'chat' template, not {self.name!r}")


def user_text(example: Mapping[str, Any], instruction: str | None) -> str:
    """The question, followed by the instruction (if any) after a blank line."""
    question = example["question"]
    return f"{question}\n\n{instruction}" if instruction else question


def shot_completion(example: Mapping[str, Any], instruction: str | None) -> str:
    """A worked answer for a few-shot example: the solution, then the final answer, boxed
    when the instruction asks for \\boxed{} (MATH solutions already end boxed)."""
    solution = example.get("solution", "")
    boxed = bool(instruction) and "\\boxed" in instruction
    if boxed and "\\boxed" in solution:
        return solution
    final = (f"The answer is $\\boxed{{{example['answer']}}}$." if boxed
             else f"The answer is {example['answer']}.")
    return f"{solution}\n{final}" if solution else final


def render_r1_zero(example, shots, config: TemplateConfig, tokenizer) -> str:
    del tokenizer
    ins = config.instruction
    turns = [f"User: {user_text(s, ins)}. Assistant: <think> {s.get('solution', '')} "
             f"</think> <answer> {s['answer']} </answer>" for s in shots]
    turns.append(f"User: {user_text(example, ins)}. Assistant:")
    # With no shots this is exactly R1_ZERO_TEMPLATE.
    return R1_ZERO_PREAMBLE + " " + "\n".join(turns)


def render_chat(example, shots, config: TemplateConfig, tokenizer) -> str:
    if tokenizer is None or not hasattr(tokenizer, "apply_chat_template"):
        raise ValueError("the 'chat' template needs a tokenizer with apply_chat_template, "
                         f"got {type(tokenizer).__name__}")
    ins = config.instruction
    messages = [{"role": "system", "content": config.system}] if config.system else []
    for s in shots:
        messages += [{"role": "user", "content": user_text(s, ins)},
                     {"role": "assistant", "content": shot_completion(s, ins)}]
    messages.append({"role": "user", "content": user_text(example, ins)})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                         **dict(config.chat_kwargs))


def render_qa(example, shots, config: TemplateConfig, tokenizer) -> str:
    del tokenizer
    ins = config.instruction
    blocks = [f"Question: {user_text(s, ins)}\nAnswer: {shot_completion(s, ins)}"
              for s in shots]
    blocks.append(f"Question: {user_text(example, ins)}\nAnswer:")
    return "\n\n".join(blocks)


def render_raw(example, shots, config: TemplateConfig, tokenizer) -> str:
    del tokenizer
    if shots:
        raise ValueError("the 'raw' template takes no few-shot examples; use 'qa' or 'chat'")
    return user_text(example, config.instruction)


Renderer = Callable[[Mapping[str, Any], Sequence[Mapping[str, Any]], TemplateConfig, Any], str]

TEMPLATES: dict[str, Renderer] = {
    "r1_zero": render_r1_zero,
    "chat": render_chat,
    "qa": render_qa,
    "raw": render_raw,
}


def render_prompt(config: TemplateConfig, example: Mapping[str, Any],
                  shots: Sequence[Mapping[str, Any]] = (), tokenizer: Any = None) -> str:
    """The prompt text for one example (config.instruction must already be resolved)."""
    if len(shots) != config.num_shots:
        raise ValueError(f"template wants {config.num_shots} shots, got {len(shots)}")
    return TEMPLATES[config.name](example, shots, config, tokenizer)


def select_shots(num_rows: int, k: int, seed: int) -> list[int]:
    """k distinct row indices of a split, the same for a given seed on every host."""
    if not 0 <= k <= num_rows:
        raise ValueError(f"asked for {k} few-shot examples from a split of {num_rows} rows")
    return [int(i) for i in np.random.default_rng(seed).permutation(num_rows)[:k]]
