"""The vectorized DeepSORT against deep-sort-realtime, the reference, on the two dev sequences.

Both get the same detections (the bundled INT8 detector at confidence 0.25, decoded and
batched as a replay does) and the same MobileNetV2 embeddings, with the reference's knobs (no
weak-detection stage). They must report the same tracks: the same detection under the same id
in every frame, hence the same boxes.

The one designed difference is the appearance gallery: the reference re-stores a confirmed
track's latest embedding every frame, so its ``nn_budget`` fills with copies; ours stores each
matched embedding once. While the budget holds a track's whole history (these sequences with
the default budget of 50) the nearest-neighbour distances are equal; with a budget of 10 the two
keep different samples and disagree in some frames, and their scores stay within 0.02.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evaluation.cache import CachedSequence, cache_sequences, run_tracker, score_runs
from pipeline.config import load_config
from tests.factories import shared
from trackers.deepsort import DeepSortParams
from trackers.registry import create_tracker

REFERENCE_KNOBS = DeepSortParams(high_confidence=0.0, min_confidence=0.0)


@pytest.fixture(scope="module")
def sequences(tmp_path_factory: pytest.TempPathFactory) -> list[CachedSequence]:
    paths = [shared("mot", "TUD-Stadtmitte"), shared("mot", "PETS09-S3MF1")]
    cfg = load_config(None, {"model.conf_threshold": 0.25, "tracker.embedder": "mobilenet"})
    return cache_sequences(cfg, paths, tmp_path_factory.mktemp("cache"), 0.25, ["mobilenet"])


def _per_frame(seq: CachedSequence, name: str, params: DeepSortParams) -> list[dict[int, int]]:
    tr = create_tracker(name, params)
    frames = []
    for i in range(seq.frames):
        dets, emb = seq.frame(i, 0.25, "mobilenet")
        tracks = tr.update(dets, emb, i)
        np.testing.assert_array_equal(tracks.xyxy, dets.xyxy[tracks.det_index])
        frames.append(dict(zip(tracks.det_index.tolist(), tracks.track_id.tolist(), strict=True)))
    return frames


@pytest.mark.parametrize("budget", [50, 1000])
def test_same_tracks_as_the_reference(sequences: list[CachedSequence], budget: int) -> None:
    params = DeepSortParams(**{**REFERENCE_KNOBS.__dict__, "nn_budget": budget})
    for seq in sequences:
        ours = _per_frame(seq, "deepsort", params)
        ref = _per_frame(seq, "deepsort-reference", params)
        assert sum(len(f) for f in ref) > 500  # the sequences really are tracked
        bad = [i for i, (a, b) in enumerate(zip(ours, ref, strict=True)) if a != b]
        assert not bad, f"{seq.name}: frames {bad[:10]} differ"


def test_small_budget_differs_within_bounds(sequences: list[CachedSequence]) -> None:
    params = DeepSortParams(**{**REFERENCE_KNOBS.__dict__, "nn_budget": 10})
    differing = 0
    rows = {}
    for name in ("deepsort", "deepsort-reference"):
        rows[name] = [run_tracker(s, create_tracker(name, params), 0.25, "mobilenet")[0]
                      for s in sequences]  # fmt: skip
    for a, b in zip(rows["deepsort"], rows["deepsort-reference"], strict=True):
        differing += int(a.shape != b.shape or not np.array_equal(a, b))
    assert differing >= 1  # the gallery policies really differ at this budget
    ours, ref = (
        score_runs(sequences, rows["deepsort"]),
        score_runs(sequences, rows["deepsort-reference"]),
    )
    for seq in ours:
        for key in ("HOTA", "IDF1", "MOTA"):
            assert abs(ours[seq][key] - ref[seq][key]) <= 0.02, (seq, key)


@pytest.mark.parametrize("every", [1, 3])
def test_cache_reproduces_the_replay(
    tmp_path: Path, sequences: list[CachedSequence], every: int
) -> None:
    """What tune and these tests run (cached detections filtered at the threshold, fed to the
    tracker) writes the same tracks as ``vigil replay`` of the sequence, also with the detector
    on every third frame only (``vigil tune --detect-every 3`` against ``replay
    --detect-every 3``)."""
    from pipeline.replay import Replay
    from pipeline.sources import FFmpegSource

    seq = sequences[1]  # PETS09-S3MF1, the shorter one
    cfg = load_config(
        None,
        {
            "model.conf_threshold": 0.25,
            "tracker.name": "deepsort",
            "tracker.embedder": "mobilenet",
            "tracker.deepsort.high_confidence": 0.0,
            "tracker.deepsort.min_confidence": 0.0,
        },
    )
    source = FFmpegSource(str(shared("mot", seq.name, "img1")), folder_fps=seq.fps)
    Replay(source, cfg, tmp_path, detect_every=every).run()
    replayed = np.loadtxt(tmp_path / "tracks.txt", delimiter=",", ndmin=2)[:, :6]
    cached, _ = run_tracker(
        seq, create_tracker("deepsort", cfg.tracker.params()), 0.25, "mobilenet", every
    )
    if every > 1:  # predicted frames are in the output: every frame has rows once tracks live
        assert len(np.unique(cached[:, 0])) > 0.9 * seq.frames
    order = np.lexsort((replayed[:, 1], replayed[:, 0]))
    np.testing.assert_allclose(replayed[order], cached[np.lexsort((cached[:, 1], cached[:, 0]))])
