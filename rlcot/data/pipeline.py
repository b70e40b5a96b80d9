"""Grain input pipeline: examples -> templated, tokenised, filtered, shuffled, sharded batches.

Order of operations. At construction every host renders and tokenises the whole split once
(seconds for benchmark-sized splits) and drops malformed rows and prompts longer than
`max_prompt_tokens`, so the kept set and the skip counts are exact and identical on all hosts.
A row is malformed when it is not UTF-8, lacks a field the template or the rewards read
('question', and `required_fields`, e.g. 'answer' for math_accuracy) or has that field empty;
such rows are skipped and counted by reason (`skipped`, one warning line), or, with
`on_bad_rows='error'`, they stop the run with the same counts and the first row of each kind.
The kept prompts then form one global stream: a seeded permutation per epoch (grain's index shuffle, a fresh
permutation each epoch), repeated `num_epochs` times (None: forever). Global batch k is
elements [k·B·H, (k+1)·B·H) of that stream, whatever the number of hosts H, and host h's
batch k is its h-th block of B: elements [k·B·H + h·B, k·B·H + (h+1)·B). The hosts' batches
k, concatenated in host order, are therefore the one-host batch k row for row (the RL loop's
global batch, whose rows the hosts' devices hold in the same blocks; rlcot.distributed). Each
pipeline is a grain `MapDataset` of batches: batch k is a pure function of (seed, k), and the
iterator's state is just the next batch index, the same on every host, which is what a
checkpoint stores to resume with exactly the same next batches.

A batch is a dict:
  prompt_text        list[str]            B rendered prompts
  prompt_ids         list[np.ndarray]     B int32 token arrays, unpadded
  prompt_tokens_BxT  np.ndarray int32     left-padded with the tokenizer's pad_id; T is
                                          max_prompt_tokens if set, else the batch maximum
  prompt_lens_B      np.ndarray int32     true prompt lengths
  index_B            np.ndarray int64     row of each prompt in the split
  example            list[dict[str, str]] the decoded examples (gold answer, tests, ...)
The RL loop repeats each prompt G times itself; the pipeline yields each prompt once.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

import grain
import numpy as np

from rlcot.data.base import decode_example
from rlcot.data.templates import TemplateConfig, render_prompt

_READ_CHUNK = 1024
ON_BAD_ROWS = ("skip", "error")

log = logging.getLogger(__name__)


class PromptTokenizer(Protocol):
    bos_id: int | None
    pad_id: int

    def encode(self, text: str, add_bos: bool = False) -> list[int]: ...


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """batch_size: prompts per host per step. max_prompt_tokens: longer prompts are dropped
    (None keeps all). add_bos: None means "not for the 'chat' template (chat templates write
    their own BOS), else the tokenizer's add_bos_by_default (if it has none: whether it has
    a BOS id)". drop_remainder: False keeps a last partial
    batch (evaluation); True keeps every host's batches full and in step (training).
    """

    batch_size: int
    template: TemplateConfig = TemplateConfig()
    max_prompt_tokens: int | None = None
    add_bos: bool | None = None
    shuffle: bool = True
    seed: int = 0
    num_epochs: int | None = None
    drop_remainder: bool = True
    prefetch_batches: int = 2  # read ahead in one background thread; 0 reads synchronously
    required_fields: tuple[str, ...] = ()  # besides 'question': fields a row must have, non-empty
    on_bad_rows: str = "skip"  # malformed rows: 'skip' (counted) or 'error'

    def __post_init__(self):
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens <= 0:
            raise ValueError(f"max_prompt_tokens must be positive or None, "
                             f"got {self.max_prompt_tokens}")
        if self.num_epochs is not None and self.num_epochs <= 0:
            raise ValueError(f"num_epochs must be positive or None, got {self.num_epochs}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")
        if self.prefetch_batches < 0:
            raise ValueError(f"prefetch_batches must be >= 0, got {self.prefetch_batches}")
        if self.on_bad_rows not in ON_BAD_ROWS:
            raise ValueError(f"on_bad_rows must be one of {ON_BAD_ROWS}, got "
                             f"{self.on_bad_rows!r}")


def left_pad(ids: Sequence[Sequence[int]], pad_id: int,
             length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(tokens_BxT int32 left-padded with pad_id, lens_B int32); T = length or the longest row."""
    lens_B = np.array([len(x) for x in ids], dtype=np.int32)
    longest = int(lens_B.max(initial=0))
    width = longest if length is None else length
    if longest > width:
        raise ValueError(f"a prompt has {longest} tokens, more than the pad length {width}")
    tokens_BxT = np.full((len(ids), width), pad_id, dtype=np.int32)
    for b, row in enumerate(ids):
        if len(row):
            tokens_BxT[b, width - len(row):] = row
    return tokens_BxT, lens_B


def read_records(source: Sequence[Any], limit: int | None = None) -> list[Any]:
    """The records of a random-access source as stored (text may be bytes), in row order: all
    of them, or the first `limit`."""
    n = len(source) if limit is None else min(len(source), limit)
    getitems = getattr(source, "__getitems__", None)
    out = []
    for start in range(0, n, _READ_CHUNK):
        idx = list(range(start, min(start + _READ_CHUNK, n)))
        out.extend(getitems(idx) if getitems else [source[i] for i in idx])
    return out


def read_all(source: Sequence[Any]) -> list[dict[str, Any]]:
    """Every record of a random-access source, decoded, in row order."""
    return [decode_example(r) for r in read_records(source)]


def row_problem(record: Any, fields: Sequence[str]) -> str | None:
    """Why a record cannot be a prompt: 'not_utf8', 'missing_FIELD' or 'empty_FIELD' for the
    first of `fields` it lacks or has blank; None when it is fine."""
    try:
        example = decode_example(record)
    except UnicodeDecodeError:
        return "not_utf8"
    for f in fields:
        if f not in example or example[f] is None:
            return f"missing_{f}"
        if isinstance(example[f], str) and not example[f].strip():
            return f"empty_{f}"
    return None


def _encode_all(tokenizer: PromptTokenizer, texts: Sequence[str],
                add_bos: bool) -> list[np.ndarray]:
    """int32 token arrays of `texts`, through encode_batch when the tokenizer has one."""
    batch = getattr(tokenizer, "encode_batch", None)
    out = []
    for start in range(0, len(texts), _READ_CHUNK):
        chunk = texts[start:start + _READ_CHUNK]
        encoded = (batch(chunk, add_bos=add_bos) if batch
                   else [tokenizer.encode(t, add_bos=add_bos) for t in chunk])
        out.extend(np.asarray(x, dtype=np.int32) for x in encoded)
    return out


class PromptPipeline:
    """Batches of prompts from one split; see the module docstring for the batch layout.

    source: a random-access sequence of examples (a TFDS data source). shots: the few-shot
    examples (config.template.num_shots of them). exclude_rows: split rows never used as
    prompts (the shots, when they come from the same split). shard: this host's share;
    None means grain.sharding.ShardByJaxProcess(). Only its shard_index and shard_count
    are used (host h takes the h-th block of B of each global batch of B·H, not grain's
    contiguous share of the whole stream); remainders follow config.drop_remainder (a last
    partial global batch is split in blocks of B from host 0 on). label: names the data in the skip
    summary and errors. After construction, `skipped` counts the rows left out by reason.
    """

    def __init__(self, source: Sequence[Any], tokenizer: PromptTokenizer,
                 config: PipelineConfig, *, shots: Sequence[Mapping[str, Any]] = (),
                 exclude_rows: Collection[int] = (),
                 shard: grain.sharding.ShardOptions | None = None, label: str = "prompts"):
        if config.template.instruction is None:
            raise ValueError("template.instruction is unresolved (None): give a string, or build "
                             "the pipeline with rlcot.data.registry.make_pipeline, which fills "
                             "in the dataset's default")
        self.config = config
        self.shard = grain.sharding.ShardByJaxProcess() if shard is None else shard
        self._source = source
        self._pad_id = tokenizer.pad_id
        add_bos = config.add_bos
        if add_bos is None:
            # Chat templates write their own BOS; plain text gets one if the model expects it.
            expects_bos = getattr(tokenizer, "add_bos_by_default", tokenizer.bos_id is not None)
            add_bos = config.template.name != "chat" and bool(expects_bos)
        self.add_bos = add_bos

        shots = [decode_example(s) for s in shots]
        self.num_rows = len(source)
        excluded = set(exclude_rows)
        fields = ("question", *(f for f in config.required_fields if f != "question"))
        candidates, texts = [], []
        bad: dict[str, list[int]] = {}
        for row, record in enumerate(read_records(source)):
            if row in excluded:
                continue
            why = row_problem(record, fields)
            if why is None:
                try:
                    texts.append(render_prompt(config.template, decode_example(record), shots,
                                               tokenizer))
                except KeyError as e:  # a field the template reads
                    why = f"missing_{e.args[0] if e.args else 'field'}"
            if why is None:
                candidates.append(row)
            else:
                bad.setdefault(why, []).append(row)
        ids = _encode_all(tokenizer, texts, add_bos)
        limit = config.max_prompt_tokens
        keep = [i for i, x in enumerate(ids) if limit is None or len(x) <= limit]
        kept = [candidates[i] for i in keep]
        if len(kept) < len(candidates):
            bad["too_long"] = sorted(set(candidates) - set(kept))
        self.num_excluded = len(excluded & set(range(self.num_rows)))
        self.num_dropped = len(bad.get("too_long", ()))
        self.skipped = {why: len(rows) for why, rows in sorted(bad.items())}
        if bad:
            where = ", ".join(f"{why} {len(rows)} (first: row {rows[0]})"
                              for why, rows in sorted(bad.items()))
            if "too_long" in bad:
                where += f" (too_long: over max_prompt_tokens={limit})"
            if config.on_bad_rows == "error":
                raise ValueError(f"{label}: {sum(self.skipped.values())} of {self.num_rows} rows "
                                 f"cannot be used: {where}; data.on_bad_rows is 'error': fix the "
                                 f"data, or set it to 'skip' to leave them out")
            log.warning("%s: skipped %d of %d rows: %s", label, sum(self.skipped.values()),
                        self.num_rows, where)
        if not kept:
            raise ValueError(
                f"no prompts left: {self.num_rows} rows, {self.num_excluded} excluded, "
                f"{self.num_dropped} longer than max_prompt_tokens={limit}"
                + "".join(f", {n} {why}" for why, n in self.skipped.items()
                          if why != "too_long"))
        self.rows = np.asarray(kept, dtype=np.int64)
        self.prompt_texts = [texts[i] for i in keep]
        self.prompt_ids = [ids[i] for i in keep]
        self.dataset = self._build()

    @property
    def num_kept(self) -> int:
        return len(self.rows)

    @property
    def steps_per_epoch(self) -> int:
        """Batches per host per epoch (fractional epochs are possible: the stream is global)."""
        return len(self.rows) // (self.config.batch_size * self.shard.shard_count)

    def _build(self) -> grain.MapDataset:
        cfg, count = self.config, self.shard.shard_count
        stream = grain.MapDataset.range(len(self.rows))
        if cfg.shuffle:
            stream = stream.seed(cfg.seed).shuffle()
        stream = stream.repeat(cfg.num_epochs)
        if cfg.num_epochs is not None and cfg.drop_remainder:
            # Keep whole global batches so that every host has the same number of steps.
            global_batch = cfg.batch_size * count
            stream = stream[:len(stream) // global_batch * global_batch]
        B, h = cfg.batch_size, self.shard.shard_index
        full, rest = divmod(len(stream), B * count)
        local = full * B + min(B, max(0, rest - h * B))  # this host's elements

        def position(j: int) -> int:  # this host's element j -> position in the global stream
            return (j // B) * B * count + h * B + j % B

        ordered = stream
        stream = grain.MapDataset.range(local).map(lambda j: ordered[position(j)])
        return stream.map(self._element).batch(
            cfg.batch_size, drop_remainder=cfg.drop_remainder, batch_fn=self._collate)

    def _element(self, pos: int) -> dict[str, Any]:
        row = int(self.rows[pos])
        return {"index": row, "prompt_text": self.prompt_texts[pos],
                "prompt_ids": self.prompt_ids[pos],
                "example": decode_example(self._source[row])}

    def _collate(self, elements: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        ids = [e["prompt_ids"] for e in elements]
        tokens_BxT, lens_B = left_pad(ids, self._pad_id, self.config.max_prompt_tokens)
        return {"prompt_text": [e["prompt_text"] for e in elements], "prompt_ids": ids,
                "prompt_tokens_BxT": tokens_BxT, "prompt_lens_B": lens_B,
                "index_B": np.array([e["index"] for e in elements], dtype=np.int64),
                "example": [e["example"] for e in elements]}

    @functools.cached_property
    def fingerprint(self) -> str:
        """Names the batch sequence (prompts, order, batching, host count); a resumed run must
        match. The same on every host (a checkpoint of a multi-host run stores one position
        for all of them), so the host's index is not part of it."""
        cfg, h = self.config, hashlib.sha256()
        h.update(repr((cfg.batch_size, cfg.seed, cfg.shuffle, cfg.num_epochs, cfg.drop_remainder,
                       cfg.max_prompt_tokens, self.shard.shard_count,
                       len(self.rows))).encode())
        h.update(self.rows.tobytes())
        for ids in self.prompt_ids:
            h.update(len(ids).to_bytes(4, "little"))
            h.update(ids.tobytes())
        return h.hexdigest()[:16]

    def get_state(self, it: grain.DatasetIterator) -> dict[str, Any]:
        """The position of `it` for a checkpoint (JSON-safe), tagged with the fingerprint."""
        return {**it.get_state(), "fingerprint": self.fingerprint}

    def iterator(self, state: Mapping[str, Any] | None = None) -> grain.DatasetIterator:
        """A grain iterator over batches, resuming right after `state` if given.

        `state` comes from `get_state(it)` (checked against this pipeline's fingerprint, so a
        changed dataset, template, tokenizer, seed, batch size or host count fails loudly) or
        from grain's own `it.get_state()` (not checked).
        """
        # grain's default (16 threads, 500 elements) would read 500 *batches* ahead.
        ahead = self.config.prefetch_batches
        options = grain.ReadOptions(num_threads=1 if ahead else 0, prefetch_buffer_size=ahead)
        it = iter(self.dataset.to_iter_dataset(options))
        if state is not None:
            state = dict(state)
            saved = state.pop("fingerprint", self.fingerprint)
            if saved != self.fingerprint:
                raise ValueError(
                    f"cannot resume: the checkpoint's data fingerprint {saved} differs from this "
                    f"pipeline's {self.fingerprint} (dataset, prompts, tokenizer, seed, batch "
                    f"size or number of hosts changed); position was {state}")
            it.set_state(state)
        return it

    def __iter__(self):
        return self.iterator()

    def __len__(self) -> int:
        """Batches this host yields (huge when num_epochs is None)."""
        return len(self.dataset)
