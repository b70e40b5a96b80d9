"""Prompt templates (R1-Zero, chat, question/answer, raw) with deterministic few-shot examples."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

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


class ChatTemplater(Protocol):
    def apply_chat_template(self, messages: Sequence[Mapping[str, str]],
                            add_generation_prompt: bool = True) -> str: ...


@dataclasses.dataclass(frozen=True)
class TemplateConfig:
    """How an example becomes a prompt string.

    name: a key of TEMPLATES. instruction: text appended to the question (None: the
    dataset's default, see rlcot.data.registry). system: chat system message (chat only).
    num_shots / fewshot_seed: k worked examples drawn deterministically from the dataset's
    few-shot split.
    """

    name: str = "r1_zero"
    instruction: str | None = None
    system: str | None = None
    num_shots: int = 0
    fewshot_seed: int = 0

    def __post_init__(self):
        if self.name not in TEMPLATES:
            raise ValueError(f"unknown template {self.name!r}; choose from {sorted(TEMPLATES)}")
        if self.num_shots < 0:
            raise ValueError(f"num_shots must be >= 0, got {self.num_shots}")
        if self.system is not None and self.name != "chat":
            raise ValueError(f"system={self.system!r} is only used by the 'chat' template, "
                             f"not {self.name!r}")


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


def render_r1_zero(example, shots, instruction, system, tokenizer) -> str:
    del system, tokenizer
    turns = [f"User: {user_text(s, instruction)}. Assistant: <think> {s.get('solution', '')} "
             f"</think> <answer> {s['answer']} </answer>" for s in shots]
    turns.append(f"User: {user_text(example, instruction)}. Assistant:")
    # With no shots this is exactly R1_ZERO_TEMPLATE.
    return R1_ZERO_PREAMBLE + " " + "\n".join(turns)


def render_chat(example, shots, instruction, system, tokenizer) -> str:
    if tokenizer is None or not hasattr(tokenizer, "apply_chat_template"):
        raise ValueError("the 'chat' template needs a tokenizer with apply_chat_template, "
                         f"got {type(tokenizer).__name__}")
    messages = [{"role": "system", "content": system}] if system else []
    for s in shots:
        messages += [{"role": "user", "content": user_text(s, instruction)},
                     {"role": "assistant", "content": shot_completion(s, instruction)}]
    messages.append({"role": "user", "content": user_text(example, instruction)})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True)


def render_qa(example, shots, instruction, system, tokenizer) -> str:
    del system, tokenizer
    blocks = [f"Question: {user_text(s, instruction)}\nAnswer: {shot_completion(s, instruction)}"
              for s in shots]
    blocks.append(f"Question: {user_text(example, instruction)}\nAnswer:")
    return "\n\n".join(blocks)


def render_raw(example, shots, instruction, system, tokenizer) -> str:
    del system, tokenizer
    if shots:
        raise ValueError("the 'raw' template takes no few-shot examples; use 'qa' or 'chat'")
    return user_text(example, instruction)


Renderer = Callable[[Mapping[str, Any], Sequence[Mapping[str, Any]], str | None, str | None,
                     Any], str]

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
    return TEMPLATES[config.name](example, shots, config.instruction, config.system, tokenizer)


def select_shots(num_rows: int, k: int, seed: int) -> list[int]:
    """k distinct row indices of a split, the same for a given seed on every host."""
    if not 0 <= k <= num_rows:
        raise ValueError(f"asked for {k} few-shot examples from a split of {num_rows} rows")
    return [int(i) for i in np.random.default_rng(seed).permutation(num_rows)[:k]]
