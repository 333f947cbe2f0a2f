"""YOLOv5 decode and greedy NMS with torch ops, for a whole batch at once, on any device.

The same semantics as :mod:`models.postprocess` (the numpy reference), operation for operation:

- candidates: objectness ``> conf``; score = objectness x class probability; the best class
  (first maximum) unless ``multi_label``; score ``> conf``; the class allow-list;
- per image, candidates ordered by (score descending, class ascending, candidate index
  ascending): exactly the order the numpy path reports, and within one class the order its
  greedy NMS visits;
- greedy NMS per class as the fixed point of ``keep <- valid & ~any(S & keep[:, None])`` with
  ``S[i, j] = IoU(i, j) > t`` for ``i < j`` of the same class (the numpy module's docstring
  proves it equals the classic loop), computed on padded ``(B, K, K)`` blocks for every image
  of the batch at once; each step is one tensor operation, never a loop over boxes;
- at most ``max_det`` per image, highest score first.

The IoU formula is the numpy one term for term, so on the CPU the keep sets are bit-identical
(a test checks it). One difference: beyond :data:`MAX_CANDIDATES` candidates in one image, the
numpy path keeps an ``argpartition`` (unordered) subset and this one the top-k, which can differ
only among candidates of exactly equal score.

The result stays on the device as one packed tensor until :func:`to_detections` copies it to
the host in one transfer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.postprocess import MAX_CANDIDATES, PostprocessParams
from pipeline.types import Detections

# Largest padded suppression block (B x K x K elements) processed in one go; beyond it, one
# image at a time with the IoU computed in row chunks, so memory stays bounded.
BLOCK_ELEMENTS = 1 << 24
ROW_CHUNK = 1024


def _torch() -> Any:
    import torch

    return torch


def xywh_to_xyxy(xywh: Any) -> Any:
    """``(N, 4)`` centre/size -> corners (the numpy function's arithmetic)."""
    torch = _torch()
    half = xywh[:, 2:4] * 0.5
    return torch.cat((xywh[:, :2] - half, xywh[:, :2] + half), dim=1)


def box_iou(a: Any, b: Any) -> Any:
    """Pairwise IoU of ``(..., N, 4)`` and ``(..., M, 4)`` xyxy boxes -> ``(..., N, M)``,
    term for term as :func:`models.postprocess.box_iou`."""
    torch = _torch()
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    iou = inter / union.clamp(min=1e-12)
    return torch.where(union > 0, iou, torch.zeros_like(iou))


def candidates(pred: Any, params: PostprocessParams) -> tuple[Any, Any, Any, Any]:
    """Decode ``pred`` ``(B, A, 5 + nc) float32`` into flat candidates.

    Returns ``image (M,) int64``, ``xyxy (M, 4) float32`` (letterbox pixels), ``score (M,)
    float32``, ``class_id (M,) int64``, grouped by image and, within an image, in the numpy
    path's candidate order (anchor index, then class for ``multi_label``).
    """
    torch = _torch()
    conf = params.conf_threshold
    b_idx, a_idx = torch.nonzero(pred[..., 4] > conf, as_tuple=True)
    rows = pred[b_idx, a_idx]
    cls_scores = rows[:, 5:] * rows[:, 4:5]
    if params.multi_label:
        r, cls = torch.nonzero(cls_scores > conf, as_tuple=True)
        score = cls_scores[r, cls]
    else:
        score, cls = cls_scores.max(dim=1)  # ties: the first maximum, as numpy's argmax
        ok = score > conf
        r = torch.nonzero(ok, as_tuple=True)[0]
        score, cls = score[r], cls[r]
    if params.classes is not None:
        allowed = torch.as_tensor(np.asarray(params.classes), dtype=torch.int64, device=cls.device)
        ok = torch.isin(cls, allowed)
        r, score, cls = r[ok], score[ok], cls[ok]
    image = b_idx[r]
    boxes = xywh_to_xyxy(rows[r, :4])
    return image, boxes, score, cls


def _order(image: Any, score: Any, cls: Any) -> Any:
    """Permutation: by image, then score descending, class ascending, candidate index."""
    torch = _torch()
    perm = torch.sort(cls, stable=True).indices
    perm = perm[torch.sort(score[perm], descending=True, stable=True).indices]
    return perm[torch.sort(image[perm], stable=True).indices]


def _ranks(group: Any) -> tuple[Any, Any]:
    """For ``group (M,)`` sorted ascending: the dense group index and the rank in the group."""
    torch = _torch()
    _, dense, sizes = torch.unique_consecutive(group, return_inverse=True, return_counts=True)
    starts = torch.cumsum(sizes, 0) - sizes
    return dense, torch.arange(group.numel(), device=group.device) - starts[dense]


def _suppression(boxes: Any, valid: Any, iou_threshold: float) -> Any:
    """``(S, K, K) bool``: ``i`` suppresses ``j`` (``i < j``, both real candidates, IoU above
    the threshold) within each block; the IoU in row chunks when a block is large."""
    torch = _torch()
    n_blocks, k = valid.shape
    upper = torch.ones((k, k), dtype=torch.bool, device=boxes.device).triu(diagonal=1)
    pair_ok = valid[:, :, None] & valid[:, None, :] & upper
    if n_blocks * k * k <= BLOCK_ELEMENTS:
        return pair_ok & (box_iou(boxes, boxes) > iou_threshold)
    for start in range(0, k, ROW_CHUNK):  # bounded memory: chunks of rows, not boxes
        stop = min(start + ROW_CHUNK, k)
        pair_ok[:, start:stop] &= box_iou(boxes[:, start:stop], boxes) > iou_threshold
    return pair_ok


def _greedy_keep(suppress: Any, valid: Any) -> Any:
    """The fixed point of ``keep <- valid & ~any_i(suppress[i, j] & keep[i])`` per block."""
    torch = _torch()
    keep = valid.clone()
    while True:
        new_keep = valid & ~(suppress & keep[:, :, None]).any(dim=1)
        if torch.equal(new_keep, keep):
            return keep
        keep = new_keep


def _nms_segments(boxes: Any, segment: Any, iou_threshold: float) -> Any:
    """Greedy NMS inside each segment (one image's one class); ``boxes`` and ``segment`` in
    visiting order. Returns ``keep (M,) bool`` in that order."""
    torch = _torch()
    device = boxes.device
    seg_order = torch.sort(segment, stable=True).indices  # grouped, visiting order kept
    dense, rank = _ranks(segment[seg_order])
    n_seg = int(dense[-1]) + 1
    k = int(rank.max()) + 1
    pad = torch.zeros((n_seg, k, 4), dtype=boxes.dtype, device=device)
    valid = torch.zeros((n_seg, k), dtype=torch.bool, device=device)
    pad[dense, rank] = boxes[seg_order]
    valid[dense, rank] = True
    if n_seg * k * k <= BLOCK_ELEMENTS:
        keep_pad = _greedy_keep(_suppression(pad, valid, iou_threshold), valid)
    else:  # one segment at a time, each trimmed to its own size
        keep_pad = torch.zeros_like(valid)
        sizes = valid.sum(dim=1).tolist()
        for i, ki in enumerate(sizes):  # a loop over segments (image x class), not boxes
            sl = (slice(i, i + 1), slice(0, int(ki)))
            keep_pad[sl] = _greedy_keep(_suppression(pad[sl], valid[sl], iou_threshold), valid[sl])
    keep = torch.zeros(boxes.shape[0], dtype=torch.bool, device=device)
    keep[seg_order] = keep_pad[dense, rank]
    return keep


def postprocess_batch(pred: Any, params: PostprocessParams) -> tuple[Any, Any]:
    """Decode + NMS for every image of ``pred`` ``(B, A, 5 + nc) float32`` (any device).

    Returns ``packed (B, D, 6) float32`` rows ``x1, y1, x2, y2, score, class`` (letterbox
    pixels, highest score first; rows beyond an image's count are zero) and ``counts (B,)
    int64``, both on ``pred``'s device.
    """
    torch = _torch()
    n_img, nc = int(pred.shape[0]), int(pred.shape[2]) - 5
    device = pred.device
    image, boxes, score, cls = candidates(pred, params)
    if image.numel() == 0:
        empty = torch.zeros((n_img, 0, 6), dtype=torch.float32, device=device)
        return empty, torch.zeros(n_img, dtype=torch.int64, device=device)
    perm = _order(image, score, cls)  # the order the results are reported in
    image, boxes, score, cls = image[perm], boxes[perm], score[perm], cls[perm]
    _, rank = _ranks(image)
    if int(rank.max()) >= MAX_CANDIDATES:  # the top-scoring candidates of each image
        sel = torch.nonzero(rank < MAX_CANDIDATES, as_tuple=True)[0]
        image, boxes, score, cls = image[sel], boxes[sel], score[sel], cls[sel]
    keep = _nms_segments(boxes, image * nc + cls, params.iou_threshold)
    image, boxes, score, cls = image[keep], boxes[keep], score[keep], cls[keep]
    counts = torch.bincount(image, minlength=n_img).clamp(max=params.max_det)
    if image.numel() == 0:
        return torch.zeros((n_img, 0, 6), dtype=torch.float32, device=device), counts
    _, out_rank = _ranks(image)
    take = out_rank < params.max_det
    packed = torch.zeros((n_img, int(counts.max()), 6), dtype=torch.float32, device=device)
    rows = torch.cat((boxes, score[:, None], cls[:, None].to(boxes.dtype)), dim=1)
    packed[image[take], out_rank[take]] = rows[take].float()
    return packed, counts


def to_detections(packed: Any, counts: Any) -> list[Detections]:
    """Packed device results -> one :class:`Detections` per image (letterbox pixels); one
    device-to-host copy for the whole batch."""
    host = packed.cpu().numpy()
    n = counts.cpu().numpy()
    out = []
    for rows, c in zip(host, n, strict=True):  # a loop over images
        r = rows[: int(c)]
        out.append(
            Detections(
                np.ascontiguousarray(r[:, :4], dtype=np.float32),
                np.ascontiguousarray(r[:, 4], dtype=np.float32),
                r[:, 5].astype(np.int32),
            )
        )
    return out
