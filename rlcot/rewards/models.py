"""Rewards computed by models: a trained reward model (RLHF) and an AI judge (RLAIF), and
what loads them for a reward spec.

    {"rm": {"reward": "reward_model", "model": "stage:rm", "normalize": "reference"}}
    {"judge": {"reward": "ai_judge", "model": "stage:judge", "template": "...",
               "max_new_tokens": 8}}

`load_models(spec, resolver, mesh, tokenizer)` loads each model a spec names once, as a
callable the RewardCombiner hands to its terms (`models=`):

- RewardModelScorer(batch) -> raw scores [N]: one batched forward on the mesh. In the RL
  loop and the generate stage the batch carries the sampled token rows (RewardInput.sequences:
  the left-padded prompt and the completion with its stop token), scored as they are, no
  host round trip per item; otherwise prompt + completion (+ eos unless truncated) are
  tokenized, as the reward_model stage's training rows are.
- JudgeGenerate(prompts) -> replies: the judge policy through rlcot's sampler, greedy, in
  batches; the ai_judge reward builds the judging prompts and parses the replies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from rlcot.rewards.base import RewardInput, RewardOutput, from_values

MODEL_REWARDS = ("reward_model", "ai_judge")


def model_sources(spec: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """{term label: (reward name, model source)} of the spec's terms that run a model
    (nested `combination` terms included, labelled 'outer/inner')."""
    from rlcot.rewards.registry import parse_reward_spec
    out: dict[str, tuple[str, str]] = {}
    for t in parse_reward_spec(spec):
        if t.reward in MODEL_REWARDS and t.params.get("model"):
            out[t.label] = (t.reward, str(t.params["model"]))
        elif t.reward == "combination":
            out.update({f"{t.label}/{k}": v for k, v in model_sources(t.params["terms"]).items()})
    return out


def plan_sources(spec: Mapping[str, Any]) -> dict[str, str]:
    """The spec's model sources as a stage's `sources()` entries (checked against the study's
    stage order before anything runs): a judge must be a model-making stage ('model of reward
    term ...'), a reward model a reward_model stage ('reward model of term ...')."""
    return {(f"model of reward term {label!r}" if reward == "ai_judge"
             else f"reward model of term {label!r}"): source
            for label, (reward, source) in model_sources(spec).items()}


def reward_model(batch: RewardInput, *, model: str, scorer: Any, normalize: str = "reference",
                 clip: float | None = None) -> RewardOutput:
    """The score of a trained reward model (stage kind reward_model) for each completion,
    normalised (rlcot.reward_model.Normalizer: 'reference' by the mean and std of its scores
    on its training responses, 'batch' over the batch, 'none') and optionally clipped.
    Metrics: raw_mean, the mean unnormalised score. Range: unbounded ([-clip, clip] with
    clip)."""
    from rlcot.reward_model import Normalizer
    card = scorer.card
    norm = Normalizer(normalize, card.get("score_mean", 0.0), card.get("score_std", 1.0) or 1.0,
                      clip)
    raw = np.asarray(scorer(batch), np.float64)
    return from_values(norm(raw), [{"raw": float(v)} for v in raw],
                       raw_mean=float(raw.mean()) if raw.size else 0.0)


class RewardModelScorer:
    """Raw reward-model scores of a RewardInput (module docstring)."""

    def __init__(self, loaded: Any, mesh: Any = None, tokenizer: Any = None,
                 batch_size: int = 64):
        from rlcot.reward_model import sequence_rewards
        from rlcot.rl.logprobs import sharded_forward
        from rlcot.stages.merge import vocab_fingerprint
        self.loaded, self.card, self.batch_size = loaded, loaded.card, batch_size
        self.tokenizer = loaded.tokenizer
        if tokenizer is not None and self.tokenizer is not None and \
                vocab_fingerprint(tokenizer) != vocab_fingerprint(self.tokenizer):
            raise ValueError("the reward model's tokenizer is not the policy's: it cannot read "
                             "the sampled token rows")
        self._fn = sharded_forward(
            lambda p, t, pos, v: sequence_rewards(loaded.graphdef, p, t, pos, v),
            loaded.params, mesh)
        self.mesh = mesh

    def _forward(self, tokens, positions, valid) -> np.ndarray:
        import jax

        from rlcot.rl.logprobs import batch_sharding, row_shards
        n = tokens.shape[0]
        if self.mesh is not None:
            pad = (-n) % row_shards(self.mesh)
            if pad:
                tokens, positions, valid = (np.concatenate([np.asarray(x), np.asarray(x[:1]).repeat(
                    pad, 0)]) for x in (tokens, positions, valid))
            rows = batch_sharding(self.mesh)
            tokens, positions, valid = (jax.device_put(x, rows) for x in (tokens, positions, valid))
        return np.asarray(jax.device_get(self._fn(self.loaded.params, tokens, positions,
                                                  valid)))[:n]

    def __call__(self, batch: RewardInput) -> np.ndarray:
        seq = batch.sequences
        if seq is not None:
            return self._forward(seq.tokens_NxL, seq.positions_NxL, seq.valid_NxL)
        return self.score_texts(batch.prompts, batch.completions, batch.truncated)

    def score_texts(self, prompts, completions, truncated=None) -> np.ndarray:
        """Scores of prompt + completion (+ eos unless truncated), right-padded rows."""
        tok = self.tokenizer
        if tok is None:
            raise ValueError("the reward model has no tokenizer to read texts with")
        p_ids, c_ids = tok.encode_batch(list(prompts)), tok.encode_batch(list(completions))
        rows = [p + c + ([] if truncated is not None and truncated[i] else [tok.eos_id])
                for i, (p, c) in enumerate(zip(p_ids, c_ids))]
        out = np.zeros(len(rows), np.float32)
        for s in range(0, len(rows), self.batch_size):
            part = rows[s:s + self.batch_size]
            width = -(-max(map(len, part)) // 16) * 16
            tokens = np.full((len(part), width), tok.pad_id, np.int32)
            valid = np.zeros((len(part), width), bool)
            for i, r in enumerate(part):
                tokens[i, :len(r)], valid[i, :len(r)] = r, True
            positions = np.broadcast_to(np.arange(width, dtype=np.int32), tokens.shape).copy()
            out[s:s + len(part)] = self._forward(tokens, positions, valid)
        return out


class JudgeGenerate:
    """`prompts -> replies` of a judge policy: greedy, `max_new_tokens`, batches of
    `batch_size` prompts (left-padded), a fixed key (greedy decoding does not use it)."""

    def __init__(self, loaded: Any, mesh: Any = None, max_new_tokens: int = 16,
                 batch_size: int = 64):
        from rlcot.sampling import Sampler, SamplingSpec
        if loaded.tokenizer is None:
            raise ValueError("the judge model has no tokenizer")
        self.tok = loaded.tokenizer
        self.sampler = Sampler(loaded.cfg, loaded.params, tokenizer=self.tok, mesh=mesh)
        self.spec = SamplingSpec(max_new_tokens=max_new_tokens, greedy=True,
                                 stop_ids=tuple(self.tok.stop_ids))
        self.batch_size = batch_size
        self.max_position = loaded.cfg.max_position
        self.card = {}

    def __call__(self, prompts: list[str]) -> list[str]:
        import jax

        from rlcot.sampling import completion_texts
        from rlcot.sampling.outputs import left_pad
        replies: list[str] = []
        for s in range(0, len(prompts), self.batch_size):
            ids = self.tok.encode_batch(prompts[s:s + self.batch_size])
            limit = self.max_position - self.spec.max_new_tokens
            ids = [p[-limit:] for p in ids]  # the verdict needs the end of a long prompt
            width = -(-max(map(len, ids)) // 16) * 16
            tokens, lens = left_pad(ids, self.tok.pad_id, width)
            out = self.sampler.generate(tokens, lens, jax.random.key(0), num_samples=1,
                                        spec=self.spec)
            replies += completion_texts(self.tok, out)
        return replies


def load_models(spec: Mapping[str, Any], resolver: Any, mesh: Any = None,
                tokenizer: Any = None) -> dict[str, Any]:
    """{model source: scorer or judge} for every model the spec's terms name (loaded once)."""
    from rlcot.stages import reward_model as rm_stage
    out: dict[str, Any] = {}
    for label, (reward, source) in model_sources(spec).items():
        if source in out:
            continue
        if reward == "reward_model":
            path = resolver.directory(source)
            if path is None:
                path = Path(source).expanduser()
            out[source] = RewardModelScorer(rm_stage.load(path, resolver, mesh), mesh, tokenizer)
        else:
            out[source] = JudgeGenerate(resolver.load(source, mesh=mesh), mesh,
                                        max_new_tokens=_judge_tokens(spec, label))
    return out


def _judge_tokens(spec: Mapping[str, Any], label: str) -> int:
    from rlcot.rewards.registry import parse_reward_spec
    head, _, rest = label.partition("/")
    for t in parse_reward_spec(spec):
        if t.label == head:
            if rest:
                return _judge_tokens(t.params["terms"], rest)
            return int(t.params.get("max_new_tokens", 16))
    return 16
