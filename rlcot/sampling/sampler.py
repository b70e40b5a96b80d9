"""The Sampler: sampling-layout parameters, size planning, compiled-loop cache, and generate()."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from flax import nnx

from rlcot.models.config import ModelConfig
from rlcot.sampling import decode, loop
from rlcot.sampling.outputs import SampleOutput, completion_texts
from rlcot.sampling.spec import SamplingSpec, bucket
from rlcot.sampling.stop import stop_string_table, vocab_bytes
from rlcot.sharding import SAMPLE_RULES, logical_to_spec

log = logging.getLogger(__name__)
_GiB = 1 << 30
# XLA:CPU compiles dots to YNNPACK fusions by default; for the small-batch matmuls of decoding
# (weights streamed once per step) its Eigen path reads the weights markedly faster on AVX2
# machines (bench/sampling.py). Options of this one compilation only: training is unaffected.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


class CacheTooLargeError(ValueError):
    """A sampling request whose KV cache (and working memory) exceeds the memory budget."""


@dataclasses.dataclass(frozen=True)
class SamplePlan:
    """Sizes of one request, known before anything is compiled or allocated."""
    prompts: int
    num_samples: int
    batch_rows: int          # prompts padded to a bucket and to the batch shards
    rows: int                # batch_rows * num_samples
    prompt_len: int          # P (bucketed)
    gen_len: int             # T (bucketed; the loop stops at max_new_tokens)
    cache_dtype: str
    shared_prefix: bool      # KV layout: B x P prefix + N x T suffix slots, else N x (P + T)
    cache_bytes: int
    cache_bytes_per_device: int
    work_bytes_per_device: int
    budget_bytes_per_device: int | None
    budget_source: str

    @property
    def cache_len(self) -> int:
        """Slots one row attends to (prompt + new tokens), in either layout."""
        return self.prompt_len + self.gen_len

    @property
    def cache_slots(self) -> int:
        """Slots the cache holds over all rows (per layer and KV head)."""
        if self.shared_prefix:
            return self.batch_rows * self.prompt_len + self.rows * self.gen_len
        return self.rows * self.cache_len

    def layout(self) -> str:
        if self.shared_prefix:
            return (f"{self.batch_rows} prompts x {self.prompt_len} shared prefix slots + "
                    f"{self.rows} rows x {self.gen_len} slots")
        return (f"{self.rows} rows x {self.cache_len} cache slots (prompt {self.prompt_len} + "
                f"{self.gen_len} new tokens)")

    @property
    def fits(self) -> bool:
        need = self.cache_bytes_per_device + self.work_bytes_per_device
        return self.budget_bytes_per_device is None or need <= self.budget_bytes_per_device

    def summary(self) -> str:
        return (f"{self.prompts} prompts x {self.num_samples} samples -> {self.layout()}, "
                f"KV cache {self.cache_bytes / _GiB:.3f} GiB ({self.cache_dtype}), "
                f"{self.cache_bytes_per_device / _GiB:.3f} GiB/device + "
                f"{self.work_bytes_per_device / _GiB:.3f} GiB/device workspace")


def _shards(mesh: Mesh | None, axes: tuple, rules: Mapping[str, Any], shape: tuple) -> int:
    if mesh is None:
        return 1
    spec = logical_to_spec(axes, rules, shape, mesh)
    used = [a for p in spec if p is not None for a in ((p,) if isinstance(p, str) else p)]
    return math.prod(mesh.shape[a] for a in used)


def _device_budget(devices: list[jax.Device], override: int | None) -> tuple[int | None, str]:
    if override is not None:
        return int(override), "configured budget"
    stats = None
    try:
        stats = devices[0].memory_stats()
    except Exception:  # noqa: BLE001  (backends without memory stats raise or return None)
        stats = None
    if stats and "bytes_limit" in stats:
        free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        return free, (f"device memory stats: {stats['bytes_limit'] / _GiB:.2f} GiB limit, "
                      f"{stats.get('bytes_in_use', 0) / _GiB:.2f} GiB in use")
    try:
        host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None, "no memory information"
    local = max(1, sum(d.process_index == jax.process_index() for d in devices))
    return host // 2 // local, f"half of host RAM ({host / _GiB:.1f} GiB) over {local} device(s)"


class Sampler:
    """Batched sampling for RL rollouts and evaluation.

        sampler = Sampler(cfg, params, tokenizer=tok, mesh=mesh)
        out = sampler.generate(prompts_BxP, lens_B, rng, num_samples=G, spec=SamplingSpec(...))
        batch = trainer_batch(out); texts = sampler.texts(out, spec)

    After each training step call `update_params(params)` to reshard the new weights into the
    sampling layout.
    """

    def __init__(self, cfg: ModelConfig, params: nnx.State, *, tokenizer: Any = None,
                 mesh: Mesh | None = None, rules: Mapping[str, Any] | None = None,
                 pad_id: int | None = None, memory_budget_bytes: int | None = None,
                 compiler_options: Mapping[str, Any] | None = None):
        self.cfg = cfg
        self.mesh = mesh
        self.rules = dict(SAMPLE_RULES if rules is None else rules)
        self.tokenizer = tokenizer
        self.pad_id = int(pad_id if pad_id is not None else
                          (tokenizer.pad_id if tokenizer is not None else 0))
        self.memory_budget_bytes = memory_budget_bytes
        if compiler_options is None:
            platform = (self.mesh.devices.flat[0] if mesh is not None else jax.devices()[0]).platform
            compiler_options = CPU_COMPILER_OPTIONS if platform == "cpu" else {}
        self.compiler_options = dict(compiler_options)
        self.params = decode.to_sampling_params(cfg, params, mesh, self.rules)
        self._vocab_bytes: list[bytes] | None = None
        self._tables: dict[tuple[str, ...], np.ndarray] = {}
        self._compiled: dict[Any, Any] = {}

    def update_params(self, params: nnx.State) -> None:
        self.params = decode.to_sampling_params(self.cfg, params, self.mesh, self.rules)

    # -- sizes ---------------------------------------------------------------------------------

    def _batch_shards(self) -> int:
        size = 1 if self.mesh is None else self.mesh.devices.size
        return _shards(self.mesh, ("batch",), self.rules, (size,))

    @staticmethod
    def shares_prefix(num_samples: int, spec: SamplingSpec) -> bool:
        """The KV layout a request decodes with: spec.shared_prefix, or when None, the shared
        prefix whenever a prompt has several samples (G = 1 has nothing to share)."""
        if spec.shared_prefix is not None:
            return spec.shared_prefix
        return num_samples > 1

    def _cache_bytes(self, rows: int, length: int, dtype: Any) -> tuple[int, int]:
        """(total, per device) bytes of a decode cache of rows x length slots."""
        shapes = decode.cache_shapes(self.cfg, rows, length, dtype)
        axes = decode.cache_logical_axes(self.cfg)
        per_device = sum(
            math.prod(s.shape) * s.dtype.itemsize // _shards(self.mesh, a, self.rules, s.shape)
            for s, a in zip(jax.tree.leaves(shapes), jax.tree.leaves(axes, is_leaf=loop.is_axes))
            if s.shape)  # the scalar write index is not part of the cache's size
        return decode.decode_cache_bytes(self.cfg, rows, length, dtype), per_device

    def plan(self, num_prompts: int, prompt_len: int, num_samples: int,
             spec: SamplingSpec) -> SamplePlan:
        """Bucketed sizes and the memory they need; raises nothing (see `check`)."""
        if num_prompts < 1 or prompt_len < 1 or num_samples < 1:
            raise ValueError(f"need >= 1 prompts, prompt tokens and samples; got "
                             f"{num_prompts}, {prompt_len}, {num_samples}")
        cfg = self.cfg
        shards = self._batch_shards()
        batch_rows = -(-bucket(num_prompts) // shards) * shards
        rows = batch_rows * num_samples
        P, T = bucket(prompt_len, 16), bucket(spec.max_new_tokens, 16)
        dtype = jnp.dtype(spec.cache_dtype or cfg.dtype)
        shared = self.shares_prefix(num_samples, spec)
        if shared:  # the prompts' prefix caches + the rows' caches of their new tokens
            sizes = [self._cache_bytes(batch_rows, P, dtype), self._cache_bytes(rows, T, dtype)]
        else:
            sizes = [self._cache_bytes(rows, P + T, dtype)]
        total, per_device = (sum(x) for x in zip(*sizes))
        act = jnp.dtype(cfg.dtype).itemsize
        # Prefill: float32 scores and probabilities [B, heads, P, P], MLP activations [B, P, F].
        prefill = batch_rows * P * (2 * cfg.n_heads * P * 4 + 3 * cfg.mlp_dim * act)
        # Decode step: float32 logits and filter temporaries [N, V], output buffers [N, T], one
        # layer's float32 scores, probabilities (and their concatenation) [N, heads, P + T].
        step = rows * cfg.vocab_size * 4 * 4 + rows * T * 12 + rows * cfg.n_heads * (P + T) * 12
        work = max(prefill // shards, step // shards)
        budget, source = _device_budget(list(self.mesh.devices.flat) if self.mesh is not None
                                        else jax.devices()[:1], self.memory_budget_bytes)
        return SamplePlan(num_prompts, num_samples, batch_rows, rows, P, T, dtype.name, shared,
                          total, per_device, work, budget, source)

    def check(self, plan: SamplePlan) -> None:
        if plan.fits:
            return
        cfg = self.cfg
        raise CacheTooLargeError(
            f"sampling request does not fit in memory: {plan.prompts} prompts x "
            f"{plan.num_samples} samples = {plan.layout()}, {cfg.n_layers} layers x "
            f"{cfg.n_kv_heads} KV heads x {cfg.head_dim} dims in {plan.cache_dtype}: KV cache "
            f"{plan.cache_bytes_per_device / _GiB:.2f} GiB per device "
            f"(+ {plan.work_bytes_per_device / _GiB:.2f} GiB workspace) > budget "
            f"{plan.budget_bytes_per_device / _GiB:.2f} GiB per device ({plan.budget_source}). "
            f"Reduce prompts per call, num_samples, max_new_tokens or prompt length, use "
            f"cache_dtype='bfloat16', shard the batch over more devices (data/fsdp), or raise "
            f"memory_budget_bytes.")

    # -- stop strings --------------------------------------------------------------------------

    def stop_table(self, stop_strings: tuple[str, ...]) -> np.ndarray:
        if not stop_strings:
            return np.zeros((1, self.cfg.vocab_size), np.int16)
        if stop_strings not in self._tables:
            if self.tokenizer is None:
                raise ValueError(f"stop_strings {stop_strings} need a tokenizer (token bytes); "
                                 "pass tokenizer= to the Sampler")
            if self._vocab_bytes is None:
                tok = self.tokenizer
                self._vocab_bytes = vocab_bytes(tok.token_bytes, tok.num_pieces,
                                                self.cfg.vocab_size)
            self._tables[stop_strings] = stop_string_table(self._vocab_bytes, stop_strings)
        return self._tables[stop_strings]

    # -- generate ------------------------------------------------------------------------------

    def _put(self, x: Any, axes: tuple) -> jax.Array:
        if self.mesh is None:
            return jnp.asarray(x)
        spec = logical_to_spec(axes, self.rules, np.shape(x), self.mesh) if axes else PartitionSpec()
        return jax.device_put(x, NamedSharding(self.mesh, spec))

    def generate(self, prompt_tokens_BxP: Any, prompt_lens_B: Any, rng: jax.Array,
                 num_samples: int = 1, spec: SamplingSpec = SamplingSpec()) -> SampleOutput:
        """G samples for each left-padded prompt; see SampleOutput for what comes back."""
        prompts = np.asarray(prompt_tokens_BxP, np.int32)
        lens = np.asarray(prompt_lens_B, np.int32)
        if prompts.ndim != 2 or lens.shape != (prompts.shape[0],):
            raise ValueError(f"expected prompt_tokens [B, P] and prompt_lens [B]; got shapes "
                             f"{prompts.shape} and {lens.shape}")
        B, P0 = prompts.shape
        if lens.min() < 1 or lens.max() > P0:
            raise ValueError(f"prompt lengths must be in [1, {P0}], got {lens.min()}..{lens.max()}")
        if lens.max() + spec.max_new_tokens > self.cfg.max_position:
            raise ValueError(f"longest prompt ({lens.max()}) + max_new_tokens "
                             f"({spec.max_new_tokens}) exceeds the model's max_position "
                             f"{self.cfg.max_position}")
        bad = [i for i in spec.stop_ids if i >= self.cfg.vocab_size]
        if bad:
            raise ValueError(f"stop_ids {bad} are outside the vocabulary ({self.cfg.vocab_size})")
        plan = self.plan(B, P0, num_samples, spec)
        self.check(plan)
        P, T = plan.prompt_len, plan.gen_len
        padded = np.full((plan.batch_rows, P), self.pad_id, np.int32)
        padded[:B, P - P0:] = prompts
        padded_lens = np.ones((plan.batch_rows,), np.int32)  # padding rows: one pad token
        padded_lens[:B] = lens
        table = self.stop_table(spec.stop_strings)

        static = loop.LoopStatic(self.cfg, spec.compiled(T), num_samples, self.pad_id,
                                 plan.shared_prefix, self.mesh, tuple(sorted(self.rules.items())))
        args = (self.params, self._put(padded, ("batch", None)), self._put(padded_lens, ("batch",)),
                self._put(rng, ()), self._put(table, ()),
                self._put(np.int32(spec.max_new_tokens), ()),
                self._put(np.int32(B * num_samples), ()))
        key = (static, padded.shape, table.shape, table.dtype.name)
        compile_s = 0.0
        if key not in self._compiled:
            t0 = time.perf_counter()
            lowered = jax.jit(loop.run, static_argnums=0).lower(static, *args)
            self._compiled[key] = lowered.compile(compiler_options=self.compiler_options or None)
            compile_s = time.perf_counter() - t0
            log.info("compiled sampling loop in %.1fs: %s", compile_s, plan.summary())
        res = self._compiled[key](*args)

        n, t = B * num_samples, spec.max_new_tokens
        lengths = res.lengths_N[:n]
        return SampleOutput(
            tokens_NxT=res.tokens_NxT[:n, :t], mask_NxT=jnp.arange(t)[None, :] < lengths[:, None],
            lengths_N=lengths, truncated_N=~res.stopped_N[:n], logp_NxT=res.logp_NxT[:n, :t],
            sample_logp_NxT=res.sample_logp_NxT[:n, :t],
            prompt_tokens_BxP=jnp.asarray(padded[:B]), prompt_lens_B=jnp.asarray(lens),
            num_samples=num_samples,
            stats={"plan": plan, "steps": res.steps, "compile_s": compile_s})

    def texts(self, out: SampleOutput, spec: SamplingSpec | None = None,
              include_stop_str: bool = True) -> list[str]:
        if self.tokenizer is None:
            raise ValueError("texts() needs a tokenizer; pass tokenizer= to the Sampler")
        stops = spec.stop_strings if spec is not None else ()
        return completion_texts(self.tokenizer, out, stops, include_stop_str)
