"""Rollouts: batched, sharded sampling with a KV cache inside one compiled loop.

    from rlcot.sampling import Sampler, SamplingSpec, trainer_batch
    sampler = Sampler(cfg, params, tokenizer=tok, mesh=mesh)
    spec = SamplingSpec(max_new_tokens=512, temperature=1.0, stop_ids=tok.stop_ids,
                        stop_strings=("</answer>",))
    out = sampler.generate(prompts_BxP, lens_B, rng, num_samples=8, spec=spec)  # [B*8, 512]
    batch = trainer_batch(out)          # prompt + completion rows for the trainer's forward
    texts = sampler.texts(out, spec)    # for the reward functions

Rows are prompt-major (row b * G + g). A row's random draws depend only on (rng, row, step),
so results do not change with the batch's sharding. The G rows of a prompt read one copy of its
KV cache (SamplingSpec.shared_prefix).
"""

from rlcot.sampling.decode import SamplingParams, to_sampling_params
from rlcot.sampling.filters import FILTERS, choose, min_p_filter, top_k_filter, top_p_filter
from rlcot.sampling.outputs import (SampleOutput, TrainerBatch, completion_texts, left_pad,
                                    trainer_batch)
from rlcot.sampling.sampler import CacheTooLargeError, SamplePlan, Sampler
from rlcot.sampling.spec import SamplingSpec, bucket
from rlcot.sampling.stop import stop_string_table

__all__ = [
    "CacheTooLargeError", "FILTERS", "SampleOutput", "SamplePlan", "Sampler", "SamplingParams",
    "SamplingSpec", "TrainerBatch", "bucket", "choose", "completion_texts", "left_pad",
    "min_p_filter", "stop_string_table", "to_sampling_params", "top_k_filter", "top_p_filter",
    "trainer_batch",
]
