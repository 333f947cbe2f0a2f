"""DeepSORT over arrays: every track of a stream at once, no per-track Python loop.

The algorithm of Wojke et al. (2017) as the reference implementation (``deep-sort-realtime``,
kept as the ``deepsort-reference`` tracker) runs it, frame by frame:

1. one batched Kalman predict for every track (:mod:`trackers.kalman`);
2. confirmed tracks vs detections: one appearance cost matrix (smallest cosine distance to the
   track's gallery of its last ``nn_budget`` matched embeddings), gated by the squared
   Mahalanobis distance (chi-square 95 %, 4 degrees of freedom) and by class; the matching
   cascade then solves it one slice per track age (frames since the last match), youngest first,
   each slice with ``scipy.optimize.linear_sum_assignment``;
3. unconfirmed tracks and confirmed tracks missed only in the last frame vs the detections left:
   ``1 - IoU`` with the Kalman boxes, gated at ``max_iou_distance``;
4. Kalman update of every matched track; unmatched tentative tracks die, others die after
   ``max_age`` misses; detections still unmatched start tentative tracks if at least
   ``init_confidence``; a track is confirmed after ``n_init`` hits.

Differences from the reference, each measured: only detections with at least
``init_confidence`` may start a track; a track is reported only in frames where it matched a
detection (coasting tracks are kept but not reported), confirmed ones always and matched
tentative ones with ``report_tentative``; and, from ByteTrack, detections scoring below
``high_confidence`` skip steps 2-3 and may only continue a confirmed track seen in the previous
frame, by IoU, after everything else (``high_confidence`` 0 turns this off). The gallery stores
each matched embedding once; the reference also re-stores a confirmed track's latest embedding
every frame, which fills its budget with copies (``tests/test_tracker_parity.py`` shows the two
agree exactly when the budget never fills, and by how much otherwise).

Per class: a track only ever matches detections of its own class, so a person never takes a
car's id. Ids are unique per stream for the life of the process (:mod:`trackers.state`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.types import Detections, Tracks
from trackers import kalman
from trackers.matching import INFEASIBLE, assign, iou_matrix, valid_detections
from trackers.state import CONFIRMED, TENTATIVE, TrackTable, matched_tracks, predicted_tracks


@dataclass(frozen=True)
class DeepSortParams:
    """DeepSORT's knobs (``tracker.deepsort`` in the config; bounds in ``metadata``).

    max_age: frames a track survives unmatched; n_init: consecutive hits to confirm;
    max_iou_distance: IoU gate (1 - IoU) of the IoU stage; max_cosine_distance: appearance
    gate; nn_budget: appearance samples kept per track; min_confidence: detections below it
    are ignored by the tracker; init_confidence: detections below it may continue a track but
    never start one; high_confidence: detections below it only continue confirmed tracks by
    IoU (ByteTrack's second association, gated at ``weak_iou_distance``); report_tentative:
    also report matched, not yet confirmed tracks.
    """

    max_age: int = field(default=30, metadata={"range": (1, 10000), "tune": (5, 120)})
    n_init: int = field(default=2, metadata={"range": (1, 100), "tune": (1, 5)})
    max_iou_distance: float = field(
        default=0.7, metadata={"range": (0.0, 1.0), "tune": (0.3, 0.95)}
    )
    max_cosine_distance: float = field(
        default=0.3, metadata={"range": (0.0, 2.0), "tune": (0.05, 0.6)}
    )
    # 25 distinct samples: what the reference's budget of 50 holds in steady state (it stores
    # each sample twice), at half the appearance cost per frame
    nn_budget: int = field(default=25, metadata={"range": (1, 10000), "tune": (5, 100)})
    min_confidence: float = field(default=0.0, metadata={"range": (0.0, 1.0)})
    init_confidence: float = field(default=0.5, metadata={"range": (0.0, 1.0), "tune": (0.2, 0.8)})
    high_confidence: float = field(default=0.25, metadata={"range": (0.0, 1.0), "tune": (0.1, 0.6)})
    weak_iou_distance: float = field(
        default=0.5, metadata={"range": (0.0, 1.0), "tune": (0.3, 0.9)}
    )
    report_tentative: bool = field(default=True, metadata={"tune": (False, True)})


class Gallery:
    """Per-slot ring buffers of the last ``budget`` embeddings: ``(C, budget, D) float32``."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.feats = np.zeros((0, budget, 0), np.float32)
        self.count = np.zeros(0, np.int32)
        self.pos = np.zeros(0, np.int32)

    def fit(self, capacity: int, dim: int) -> None:
        """Make room for ``capacity`` slots of ``dim``-d embeddings (keeps what fits)."""
        c, _, d = self.feats.shape
        if d != dim:  # another embedder: old samples cannot be compared with new ones
            self.feats = np.zeros((capacity, self.budget, dim), np.float32)
            self.count = np.zeros(capacity, np.int32)
            self.pos = np.zeros(capacity, np.int32)
        elif capacity > c:
            grow = capacity - c
            self.feats = np.concatenate((self.feats, np.zeros((grow, self.budget, d), np.float32)))
            self.count = np.concatenate((self.count, np.zeros(grow, np.int32)))
            self.pos = np.concatenate((self.pos, np.zeros(grow, np.int32)))

    def clear(self, slots: np.ndarray) -> None:
        self.count[slots] = 0
        self.pos[slots] = 0

    def push(self, slots: np.ndarray, feats: np.ndarray) -> None:
        """One embedding per slot (slots distinct), overwriting each slot's oldest when full."""
        if slots.size == 0:
            return
        self.feats[slots, self.pos[slots]] = feats
        self.pos[slots] = (self.pos[slots] + 1) % self.budget
        self.count[slots] = np.minimum(self.count[slots] + 1, self.budget)

    def cosine_distance(
        self, slots: np.ndarray, feats: np.ndarray, pairs: np.ndarray | None = None
    ) -> np.ndarray:
        """Smallest cosine distance from each slot's samples to each embedding: ``(T, N)``
        float64 (``slots`` distinct). With ``pairs`` (``(T, N)`` bool), only those entries are
        computed (the others are left at 1), chosen when it is the smaller amount of work."""
        t, n = slots.size, feats.shape[0]
        out = np.ones((t, n))
        if t == 0 or n == 0:
            return out
        count = self.count[slots]
        used = int(count.max())
        if used == 0:
            return out
        if pairs is not None and 2 * int(pairs.sum()) < t * n:
            ti, ni = np.nonzero(pairs)  # row-major: grouped by track
            out[ti, ni] = self._pair_distances(slots, ti, ni, feats, used)
            return out
        g = self.feats[slots, :used]  # (T, S, D)
        block = (g.reshape(t * used, -1) @ feats.T).reshape(t, used, n)
        block[np.arange(used)[None, :] >= count[:, None]] = -np.inf
        return 1.0 - block.max(axis=1).astype(np.float64)

    def _pair_distances(
        self, slots: np.ndarray, ti: np.ndarray, ni: np.ndarray, feats: np.ndarray, used: int
    ) -> np.ndarray:
        """``(P,)`` float32 distances of the pairs ``(slots[ti], feats[ni])`` (``ti`` sorted).

        The galleries are the bulk of the memory touched (``S x D`` float32 per track, 128 KB
        at 25 x 1280), so the work is arranged to read each once. Slots are allocated lowest
        first, so the tracks sit in a compact window ``[lo, hi)`` of the gallery: the first
        ``k`` embeddings each track is compared with are scattered into a small ``(span, D,
        k)`` array and one stacked product runs over the window as it lies in memory (no copy
        of a gallery). The pairs beyond a track's ``k``-th (a young track whose wide gate holds
        many detections) have their gallery gathered, a copy per pair: three times the memory
        traffic. ``k`` (0 = gather every pair) minimizes the estimate that weighs a float moved
        through memory as about 8 multiply-adds."""
        rs = slots[ti]
        per_track = np.bincount(ti, minlength=slots.size)
        rank = np.arange(ti.size) - (np.cumsum(per_track) - per_track)[ti]
        lo, hi = int(rs.min()), int(rs.max()) + 1
        ks = np.arange(int(per_track.max()) + 1)
        beyond = np.maximum(per_track[None, :] - ks[:, None], 0).sum(axis=1)  # gathered pairs
        cost = np.where(ks > 0, (hi - lo) * (ks + 8), 0) + 24 * beyond
        k = int(np.argmin(cost))
        unused = np.arange(used)[None, :]
        dist = np.empty(ti.size, np.float32)
        near = rank < k
        if k:
            at = rs[near] - lo
            wanted = np.zeros((hi - lo, feats.shape[1], k), np.float32)
            wanted[at, :, rank[near]] = feats[ni[near]]
            sims = np.matmul(self.feats[lo:hi, :used], wanted)  # (span, S, k)
            sims[unused >= self.count[lo:hi][:, None]] = -np.inf
            dist[near] = 1.0 - sims.max(axis=1)[at, rank[near]]
        far = ~near
        if far.any():
            g = self.feats[rs[far], :used]  # (F, S, D)
            pair_sims = np.matmul(g, feats[ni[far]][:, :, None])[..., 0]  # (F, S)
            pair_sims[unused >= self.count[rs[far]][:, None]] = -np.inf
            dist[far] = 1.0 - pair_sims.max(axis=1)
        return dist


class VectorizedDeepSort:
    """DeepSORT over arrays (see the module docstring); one instance per stream."""

    uses_appearance = True

    def __init__(self, params: DeepSortParams | None = None) -> None:
        self.params = params or DeepSortParams()
        self.table = TrackTable()
        self.gallery = Gallery(self.params.nn_budget)

    def reset(self) -> None:
        self.table.clear()
        self.gallery.clear(np.arange(self.gallery.count.size))

    @property
    def live_tracks(self) -> int:
        return len(self.table)

    def _appearance_cost(
        self,
        slots: np.ndarray,
        dets: np.ndarray,
        xyxy: np.ndarray,
        cls: np.ndarray,
        feats: np.ndarray,
    ) -> np.ndarray:
        """Gated appearance cost of confirmed ``slots`` against detection rows ``dets``:
        ``(len(slots), len(dets))``, :data:`INFEASIBLE` outside the Mahalanobis and class
        gates (computed only inside them)."""
        tb = self.table
        z = kalman.xyxy_to_xyah(xyxy[dets])
        feasible = kalman.gate(tb.mean[slots], tb.cov[slots], z)
        feasible &= tb.class_id[slots][:, None] == cls[dets][None]
        rows = np.flatnonzero(feasible.any(axis=1))
        cols = np.flatnonzero(feasible.any(axis=0))
        cost = np.full(feasible.shape, INFEASIBLE)
        if rows.size and cols.size:
            keep = feasible[rows[:, None], cols[None, :]]
            sub = self.gallery.cosine_distance(slots[rows], feats[dets[cols]], keep)
            cost[rows[:, None], cols[None, :]] = np.where(keep, sub, INFEASIBLE)
        return cost

    def _cascade(
        self,
        confirmed: np.ndarray,
        xyxy: np.ndarray,
        cls: np.ndarray,
        feats: np.ndarray,
        unmatched: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Appearance matching of confirmed tracks, one slice per age (frames since the last
        match), youngest first. Returns matched slots, their detections, detections left."""
        tb, p = self.table, self.params
        if confirmed.size == 0 or unmatched.size == 0:
            return confirmed[:0], unmatched[:0], unmatched
        cost = self._appearance_cost(confirmed, unmatched, xyxy, cls, feats)
        col_of = np.full(int(unmatched.max()) + 1, -1)
        col_of[unmatched] = np.arange(unmatched.size)
        tsu = tb.time_since_update[confirmed]
        m_slots, m_dets = [], []
        # a loop over the distinct ages present (at most max_age), one assignment each
        for level in np.unique(tsu[(tsu >= 1) & (tsu <= p.max_age)]).tolist():
            if unmatched.size == 0:
                break
            rows = np.flatnonzero(tsu == level)
            sub = cost[rows[:, None], col_of[unmatched][None, :]]
            r, d, unmatched = assign(sub, p.max_cosine_distance, rows, unmatched)
            m_slots.append(confirmed[r])
            m_dets.append(d)
        if not m_slots:
            return confirmed[:0], unmatched[:0], unmatched
        return np.concatenate(m_slots), np.concatenate(m_dets), unmatched

    def _weak_stage(
        self, confirmed: np.ndarray, matched: np.ndarray, weak: np.ndarray, detections: Detections
    ) -> tuple[np.ndarray, np.ndarray]:
        """ByteTrack's second association: confirmed tracks seen in the previous frame and not
        matched yet vs the weak detections (``min_confidence`` up to ``high_confidence``), by
        IoU with the Kalman boxes. Weak detections continue tracks but never start one, and
        their embeddings (often of a half-hidden person) stay out of the gallery."""
        tb, p = self.table, self.params
        left = tb.without(confirmed, matched)
        left = left[tb.time_since_update[left] == 1]
        if left.size == 0 or weak.size == 0:
            return left[:0], weak[:0]
        cost = 1.0 - iou_matrix(tb.predicted_xyxy(left), detections.xyxy[weak])
        cost[tb.class_id[left][:, None] != detections.class_id[weak][None]] = INFEASIBLE
        m, d, _ = assign(cost, p.weak_iou_distance, left, weak)
        return m, d

    def update(
        self,
        detections: Detections,
        embeddings: np.ndarray | None,
        frame_index: int = 0,
        pts: float = 0.0,
    ) -> Tracks:
        """Track one frame. ``embeddings``: ``(N, D) float32``, one L2-normalised row per
        detection (rows of detections below ``high_confidence`` are never read). Returns the
        tracks matched in this frame (see the module docstring)."""
        p, tb = self.params, self.table
        if embeddings is None or embeddings.shape[0] != len(detections):
            # the cascade needs a real appearance per detection: a constant one would make
            # every assignment inside the motion gate a tie
            raise ValueError("DeepSORT needs one embedding row per detection")
        xyxy, cls = detections.xyxy, detections.class_id
        feats = np.asarray(embeddings, np.float32)
        order = tb.active()
        tb.predict(order)
        state = tb.state[order]
        confirmed, unconfirmed = order[state == CONFIRMED], order[state == TENTATIVE]
        dets = valid_detections(detections, p.min_confidence)
        strong = detections.confidence[dets] >= p.high_confidence
        dets, weak = dets[strong], dets[~strong]

        m_a, d_a, unmatched = self._cascade(confirmed, xyxy, cls, feats, dets)
        left = tb.without(confirmed, m_a)  # in creation order, as the reference
        candidates = np.concatenate((unconfirmed, left[tb.time_since_update[left] == 1]))
        m_b, d_b = candidates[:0], unmatched[:0]
        if candidates.size and unmatched.size:
            cost = 1.0 - iou_matrix(tb.predicted_xyxy(candidates), xyxy[unmatched])
            cost[tb.class_id[candidates][:, None] != cls[unmatched][None]] = INFEASIBLE
            m_b, d_b, unmatched = assign(cost, p.max_iou_distance, candidates, unmatched)

        matched, m_det = np.concatenate((m_a, m_b)), np.concatenate((d_a, d_b))
        m_c, d_c = self._weak_stage(confirmed, matched, weak, detections)
        tb.correct(matched, xyxy[m_det], detections.confidence[m_det], m_det)
        hit = tb.state[matched] == TENTATIVE
        tb.state[matched[hit & (tb.hits[matched] >= p.n_init)]] = CONFIRMED
        self.gallery.fit(tb.capacity, feats.shape[1])
        self.gallery.push(matched, feats[m_det])
        tb.correct(m_c, xyxy[d_c], detections.confidence[d_c], d_c)
        matched = np.concatenate((matched, m_c))

        missed = tb.without(order, matched)
        dead = (tb.state[missed] == TENTATIVE) | (tb.time_since_update[missed] > p.max_age)
        tb.remove(missed[dead])
        self.gallery.clear(missed[dead])

        born = unmatched[detections.confidence[unmatched] >= p.init_confidence]
        if born.size:
            slots = tb.add(xyxy[born], cls[born], detections.confidence[born], born)
            self.gallery.fit(tb.capacity, feats.shape[1])
            self.gallery.clear(slots)
            self.gallery.push(slots, feats[born])
        return self._report(frame_index, pts, detections)

    def _report(self, frame_index: int, pts: float, detections: Detections) -> Tracks:
        tb = self.table
        order = tb.active()
        shown = tb.det_index[order] >= 0
        if not self.params.report_tentative:
            shown &= tb.state[order] == CONFIRMED
        return matched_tracks(tb, order[shown], detections, frame_index, pts)

    def predict_only(self, frame_index: int = 0, pts: float = 0.0) -> Tracks:
        """Advance every track one frame without detections (a frame the detector skipped) and
        return the confirmed tracks matched at the last detection frame at their predicted
        boxes (``det_index`` -1, confidence 0). No track is marked missed: a frame nobody
        looked at is not evidence that a target left."""
        tb = self.table
        order = tb.active()
        tb.predict(order, count_miss=False)
        shown = order[(tb.time_since_update[order] == 0) & (tb.state[order] == CONFIRMED)]
        return predicted_tracks(tb, shown, frame_index, pts)
