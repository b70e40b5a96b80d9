"""Packed rows for the update and log-prob passes: no work on padding, logits only where needed.

The rollout batch is [N, L] with left-padded prompts and right-padded completions. A pass over
it in that layout spends most of its time on padding. Here the host plans, for each group of
rows (a minibatch of the update, or the whole batch of a log-prob pass), a packed layout:

  - each row's span, from its first valid token to its last *needed* token (one whose log-prob
    or value the loss reads), is copied into a packed row of `C` slots; several spans share a
    packed row, each with its own segment id (attention stays within a segment, positions are
    the row's own; rlcot.models.transformer's `segment_ids_BxT`, as SFT packing uses);
  - the packed rows are split over the `K` micro-batches, `P` per micro-batch;
  - per packed row, the `Q` slots whose final hidden state predicts a needed token
    (`query`): logits, log-softmax and entropy are computed there only;
  - `back` maps every [S, L] position of the group to its entry in the flattened [P * Q]
    results (P * Q, one past the end, for positions not computed in this micro-batch), so the
    per-token outputs return in the padded layout and the loss, its aggregation weights and the
    metrics are computed there exactly as on the padded path.

Modes: "pack" (first-fit decreasing into rows of C slots, C chosen for the fewest slots, each
weighted by the attention cost of a row of C),
"trim" (one span per packed row, C the longest span), "none" (the padded layout; no plan).
Shapes are bucketed (C and Q to multiples of 32, P to 1, 2, 3, 4, 6, 8, 12, ... times the
batch shards) and a shape compiled before is reused while the rows fit it with at most 1.25x
the slots of the best new one, new shapes in a run leaving room for 10% longer rows, so the
jitted passes compile for few shapes. Results equal the padded computation up to float
rounding: the same tokens see the same keys at the same positions.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

PACKING_MODES = ("none", "pack", "trim")
BUCKET = 32                   # C and Q are multiples of this
# The row width at which attention costs about as much per slot as the rest of the layer (the
# choice of C weighs slots x (1 + C / ATTENTION_WIDTH)); ~480 measured for the toy R1-Zero
# model on CPU, larger for wider models.
ATTENTION_WIDTH = 512


def _round_up(n: int, m: int) -> int:
    return -(-int(n) // m) * m


def _grid(n: int) -> int:
    """The smallest of 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, ... that is >= n (steps of ~1.5x)."""
    v = 1
    while v < n:
        v = v + 1 if v < 4 else (v * 3 // 2 if v & (v - 1) == 0 else v * 4 // 3)
    return v


@dataclasses.dataclass(frozen=True)
class PackPlan:
    """Host arrays of a packing plan for G groups of S rows of length L, K micro-batches each:

    src_GxKxPxC: index into the group's flattened [S * L] arrays (S * L: an empty slot);
    seg_GxKxPxC: segment id of each slot (0: empty); query_GxKxPxQ: slot whose hidden state
    predicts a needed token (0 on unused queries, whose results are never read);
    back_GxKxSxL: index into micro-batch k's flattened [P * Q] results (P * Q: not computed
    there); member_GxKxS: 1.0 where row s is packed in micro-batch k.
    real_tokens: valid tokens of the G groups' rows; packed_tokens: of them, those copied
    into slots; needed: positions whose log-prob is computed."""
    src_GxKxPxC: np.ndarray
    seg_GxKxPxC: np.ndarray
    query_GxKxPxQ: np.ndarray
    back_GxKxSxL: np.ndarray
    member_GxKxS: np.ndarray
    real_tokens: int
    packed_tokens: int
    needed: int
    order: np.ndarray | None = None   # the update's minibatch rows [E, M, S] (rl.update)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(P, C, Q): packed rows per micro-batch, slots per row, queries per row."""
        return (self.src_GxKxPxC.shape[2], self.src_GxKxPxC.shape[3],
                self.query_GxKxPxQ.shape[3])

    @property
    def slots(self) -> int:
        """Positions a pass over the plan processes (padded packed slots included)."""
        return int(self.src_GxKxPxC.size)

    @property
    def logit_slots(self) -> int:
        return int(self.query_GxKxPxQ.size)

    def arrays(self) -> dict[str, np.ndarray]:
        """The per-micro-batch arrays the jitted passes read (names without shapes)."""
        return {"src": self.src_GxKxPxC, "seg": self.seg_GxKxPxC, "query": self.query_GxKxPxQ,
                "back": self.back_GxKxSxL, "member": self.member_GxKxS}

    def stats(self) -> dict[str, float]:
        return {"update/real_tokens": float(self.real_tokens),
                "update/slots": float(self.slots),
                "update/slots_per_real_token": self.slots / max(self.real_tokens, 1),
                "update/logit_slots": float(self.logit_slots),
                "update/needed_tokens": float(self.needed)}


def to_host(x) -> np.ndarray:
    """The whole array on this host (gathered from every process when the array spans several),
    for planning: every process makes the same plan from the same rows."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def needed_positions(valid_NxL: np.ndarray, need_NxL: np.ndarray | None = None) -> np.ndarray:
    """Positions t whose log-prob is defined (tokens t and t - 1 valid, see rl.logprobs) and,
    if need_NxL is given, needed (e.g. the loss mask)."""
    valid = np.asarray(valid_NxL).astype(bool)
    defined = np.zeros_like(valid)
    defined[:, 1:] = valid[:, 1:] & valid[:, :-1]
    return defined if need_NxL is None else defined & (np.asarray(need_NxL) > 0)


def _ffd(lengths: list[int], width: int) -> list[list[int]]:
    """First-fit decreasing: lists of indices into `lengths`, each summing to <= width."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for b, r in enumerate(room):
            if lengths[i] <= r:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(width - lengths[i])
    return bins


def plan_packing(valid_GxSxL: np.ndarray, need_GxSxL: np.ndarray, *, micro_batches: int = 1,
                 mode: str = "pack", row_multiple: int = 1,
                 width: int | None = None, known: Sequence[tuple[int, int, int]] = (),
                 reuse: float = 1.25, headroom: float = 1.1) -> PackPlan:
    """The packing plan (see the module docstring) of G groups of S rows.

    need_GxSxL: positions whose log-prob (or value) is needed, e.g. the loss mask; positions
    where it is undefined (see `needed_positions`) are dropped. A row without a needed position
    is not packed. row_multiple: P is a multiple of it (the batch shards). width: the packed
    row size for "pack" (None: the multiple of 32 from the longest span to 2.5x it with the
    least slots x (1 + C / ATTENTION_WIDTH)); at least the longest span. P is rounded up to
    1, 2, 3, 4, 6, 8, 12, ... (then to row_multiple), C and Q to multiples of 32.
    known: (P, C, Q) shapes of plans made before (`PackPlan.shape`, compiled already): the
    smallest that holds these rows in at most `reuse` x the slots of the best new shape is
    used instead; when none does, the new shape is made for spans `headroom` x as long, so
    that rows growing during a run (as responses do in RL) fit it for a while. A run then
    compiles its passes for few shapes."""
    if mode not in ("pack", "trim"):
        raise ValueError(f"packing mode must be 'pack' or 'trim' for a plan, got {mode!r}")
    valid = np.asarray(valid_GxSxL).astype(bool)
    if valid.ndim != 3:
        raise ValueError(f"valid must be [G, S, L], got shape {valid.shape}")
    G, S, L = valid.shape
    K = micro_batches
    if K < 1 or row_multiple < 1:
        raise ValueError(f"micro_batches ({K}) and row_multiple ({row_multiple}) must be >= 1")
    need = needed_positions(valid.reshape(G * S, L), np.asarray(need_GxSxL).reshape(G * S, L))
    need = need.reshape(G, S, L)

    # Each row's span: first valid token .. last needed token (inclusive).
    spans = []                                   # per group: [(row, start, end)]
    for g in range(G):
        rows = []
        for s in np.flatnonzero(need[g].any(-1)):
            start = int(np.argmax(valid[g, s]))
            end = int(L - np.argmax(need[g, s, ::-1]))
            rows.append((int(s), start, end))
        spans.append(rows)
    longest = max((e - b for rows in spans for _, b, e in rows), default=1)

    def layout(w: int, scale: float = 1.0) -> list[list[list[int]]]:
        """Packed rows of each group (lists of spans), spans `scale` x as long as they are."""
        if mode == "trim":
            return [[[i] for i in range(len(rows))] for rows in spans]
        return [_ffd([math.ceil((e - b) * scale) for _, b, e in rows], w) for rows in spans]

    def rows_per_micro(bins: list[list[list[int]]]) -> int:
        return _round_up(_grid(max(-(-len(b) // K) for b in bins)), row_multiple)

    def queries(bins: list[list[list[int]]]) -> int:
        """The most needed positions in one packed row."""
        return max((sum(int(need[g, spans[g][i][0]].sum()) for i in b)
                    for g in range(G) for b in bins[g]), default=1)

    def new_shape(scale: float) -> tuple[int, int, int]:
        """(P, C, Q) for spans `scale` x as long (room for rows that grow during a run)."""
        if mode == "trim":
            C = _round_up(math.ceil(longest * scale), BUCKET)
        elif width is not None:
            if width < longest:
                raise ValueError(f"packing width {width} is below the longest span "
                                 f"({longest})")
            C = _round_up(width, BUCKET)
        else:
            C, best = None, None
            first = _round_up(math.ceil(longest * scale), BUCKET)
            for w in range(first, max(first * 5 // 2, 4 * BUCKET) + 1, BUCKET):
                # Attention over a packed row costs ~ its width per slot: wide rows pack
                # tighter but each slot costs more.
                cost = rows_per_micro(layout(w, scale)) * w * (1.0 + w / ATTENTION_WIDTH)
                if best is None or cost < best:
                    C, best = w, cost
        bins = layout(C, scale)
        return rows_per_micro(bins), C, min(_round_up(math.ceil(queries(bins) * scale),
                                                      BUCKET), C)

    def fits(shape: tuple[int, int, int]) -> list | None:
        P, C, Q = shape
        if C < longest or P % row_multiple:
            return None
        bins = layout(C)
        return bins if rows_per_micro(bins) <= P and queries(bins) <= Q else None

    # A shape compiled before is reused when the rows fit it with at most `reuse` x the slots
    # of the best new one; a new shape in a run (known shapes, none fits) gets `headroom`.
    P, C, Q = best = new_shape(1.0)
    bins = None
    for shape in sorted(known, key=lambda shape: shape[0] * shape[1]):
        if shape[0] * shape[1] <= reuse * P * C and (bins := fits(shape)) is not None:
            P, C, Q = shape
            break
    if bins is None and known and headroom > 1.0:
        roomy = new_shape(headroom)
        if (bins := fits(roomy)) is not None:
            P, C, Q = roomy
    if bins is None:
        P, C, Q = best
        bins = layout(C)
        P = max(P, rows_per_micro(bins))

    src = np.full((G, K, P, C), S * L, np.int32)
    seg = np.zeros((G, K, P, C), np.int32)
    query = np.zeros((G, K, P, Q), np.int32)
    back = np.full((G, K, S, L), P * Q, np.int32)
    member = np.zeros((G, K, S), np.float32)
    packed = 0
    for g in range(G):
        for j, b in enumerate(bins[g]):
            k, p = divmod(j, P)
            off, q = 0, 0
            for sid, i in enumerate(b, start=1):
                s, start, end = spans[g][i]
                n = end - start
                src[g, k, p, off:off + n] = s * L + np.arange(start, end)
                seg[g, k, p, off:off + n] = sid
                t_need = np.flatnonzero(need[g, s])          # needed positions t (t >= 1)
                query[g, k, p, q:q + len(t_need)] = off + (t_need - 1 - start)
                back[g, k, s, t_need] = p * Q + q + np.arange(len(t_need))
                member[g, k, s] = 1.0
                packed += int(valid[g, s, start:end].sum())
                off, q = off + n, q + len(t_need)
    return PackPlan(src, seg, query, back, member, real_tokens=int(valid.sum()),
                    packed_tokens=packed, needed=int(need.sum()))


# ---- Inside jit: into the packed layout and back --------------------------------------------

def pack_rows(x_SxL: jax.Array, src_PxC: jax.Array, fill) -> jax.Array:
    """Packed [P, C] view of a per-token array of the group (`fill` on empty slots)."""
    flat = jnp.concatenate([x_SxL.reshape(-1), jnp.full((1,), fill, x_SxL.dtype)])
    return jnp.take(flat, src_PxC, axis=0)


def take_queries(x_PxCx: jax.Array, query_PxQ: jax.Array) -> jax.Array:
    """[P, Q, ...]: the entries of x at each packed row's query slots."""
    idx = query_PxQ.reshape(query_PxQ.shape + (1,) * (x_PxCx.ndim - 2))
    return jnp.take_along_axis(x_PxCx, idx, axis=1)


def unpack(v_PxQ: jax.Array, back_SxL: jax.Array) -> jax.Array:
    """Per-query results back in the group's [S, L] layout, 0 where not computed."""
    flat = jnp.concatenate([v_PxQ.reshape(-1), jnp.zeros((1,), v_PxQ.dtype)])
    return jnp.take(flat, back_SxL, axis=0)


def packed_inputs(tokens_SxL: jax.Array, positions_SxL: jax.Array, valid_SxL: jax.Array,
                  pack: dict) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(tokens, positions, valid, segment ids), all [P, C], of one micro-batch's packed rows
    (pack: that micro-batch's slice of `PackPlan.arrays()`)."""
    src, seg = pack["src"], pack["seg"]
    tokens_PxC = pack_rows(tokens_SxL.astype(jnp.int32), src, 0)
    positions_PxC = pack_rows(positions_SxL.astype(jnp.int32), src, 0)
    valid_PxC = pack_rows(valid_SxL.astype(bool), src, False) & (seg > 0)
    return tokens_PxC, positions_PxC, valid_PxC, seg
