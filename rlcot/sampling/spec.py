"""Static sampling settings (a hashable frozen dataclass) and the shape buckets they compile to."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class SamplingSpec:
    """How to sample. Hashable: it is a static argument of the compiled sampling loop.

    Filters apply in the order temperature -> top-k -> top-p -> min-p (as transformers does);
    each is off at its default. greedy ignores all of them and takes the argmax.
    stop_ids end a row when sampled (the stop token is kept in the completion); stop_strings
    end it when the decoded completion contains one of them (matched on device, token by token;
    needs a tokenizer).
    shared_prefix: the KV-cache layout of decoding. True: one cache of the prompt per prompt,
    read by all of its G samples, plus one cache per sample for its new tokens
    (B*P + B*G*T slots); False: every sample gets its own copy of the prompt's cache
    (B*G*(P + T) slots). Both give the same tokens; None picks the faster one for G (see
    `Sampler.shares_prefix`).
    """
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    greedy: bool = False
    stop_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    cache_dtype: str | None = None  # None: the model's compute dtype
    shared_prefix: bool | None = None

    def __post_init__(self):
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        if not self.greedy and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 (use greedy=True for argmax), "
                             f"got {self.temperature}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if not 0.0 <= self.min_p < 1.0:
            raise ValueError(f"min_p must be in [0, 1) (0 = off), got {self.min_p}")
        for name in ("stop_ids", "stop_strings"):
            if not isinstance(getattr(self, name), tuple):
                raise TypeError(f"{name} must be a tuple (hashable), got "
                                f"{type(getattr(self, name)).__name__}")
        if any(not isinstance(i, int) or i < 0 for i in self.stop_ids):
            raise ValueError(f"stop_ids must be non-negative ints, got {self.stop_ids}")
        if any(not isinstance(s, str) or not s for s in self.stop_strings):
            raise ValueError(f"stop_strings must be non-empty strings, got {self.stop_strings}")
        if self.cache_dtype not in (None, "float32", "bfloat16", "float16"):
            raise ValueError(f"cache_dtype must be None/float32/bfloat16/float16, "
                             f"got {self.cache_dtype!r}")
        if self.shared_prefix is not None and not isinstance(self.shared_prefix, bool):
            raise ValueError(f"shared_prefix must be None (automatic), True or False, "
                             f"got {self.shared_prefix!r}")

    def replace(self, **kw) -> "SamplingSpec":
        return dataclasses.replace(self, **kw)

    def compiled(self, gen_len: int) -> "SamplingSpec":
        """The part of the spec that shapes compiled code: lengths within one bucket and the
        stop strings (which reach the loop as a table, an argument) share a compilation; the
        KV layout reaches the loop resolved (LoopStatic.shared_prefix)."""
        return dataclasses.replace(self, max_new_tokens=gen_len, stop_strings=(),
                                   shared_prefix=None)


def bucket(n: int, minimum: int = 1) -> int:
    """Smallest size >= max(n, minimum) of the form 2^k or 3 * 2^k (waste < 50%, few shapes)."""
    if n < 1:
        raise ValueError(f"cannot bucket a size < 1, got {n}")
    n = max(n, minimum)
    p = 1 << (n - 1).bit_length()  # next power of two
    three_quarters = 3 * p // 4
    return three_quarters if three_quarters >= n and p >= 4 else p
