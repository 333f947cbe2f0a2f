"""Detection accuracy: COCO-style mAP of a detector on a COCO-format data set (pycocotools).

Layout expected under ``--data``: ``annotations/*.json`` (COCO instances, ``bbox`` in pixels,
original COCO category ids) and the images under ``images/`` (any depth; matched by
``file_name``). Predictions follow the YOLOv5 validation protocol: square letterbox at ``imgsz``,
conf 0.001, IoU 0.6, multi-label, at most 300 per image.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from models.detector import Detector
from models.postprocess import postprocess
from pipeline.preprocess import CpuPreprocessor, boxes_to_source
from pipeline.types import VigilError

# YOLO's 80 class indices -> the original 91-id COCO category ids.
COCO80_TO_91 = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27,
    28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53,
    54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80,
    81, 82, 84, 85, 86, 87, 88, 89, 90,
]  # fmt: skip


SPLITS = ("all", "eval", "tune")


def split_ids(image_ids: list[int], split: str) -> list[int]:
    """A fixed split of a labelled set: ``tune`` is every 4th image by sorted id (the images
    the model toolchain may look at: distillation, INT8 calibration), ``eval`` the other three
    quarters (the images its accuracy is measured on), ``all`` everything."""
    ids = sorted(image_ids)
    if split == "all":
        return ids
    if split == "tune":
        return ids[::4]
    if split == "eval":
        return [i for k, i in enumerate(ids) if k % 4]
    raise VigilError(f"unknown split {split!r} (choose {', '.join(SPLITS)})")


def tune_images(data: Path) -> list[Path]:
    """Paths of the ``tune`` split's images of a COCO-layout folder (no pycocotools needed)."""
    import json

    ann_path, images_root = find_annotations(data)
    try:
        images = json.loads(ann_path.read_text())["images"]
        names = {int(im["id"]): Path(im["file_name"]).name for im in images}
    except (ValueError, KeyError, TypeError) as e:
        raise VigilError(f"{ann_path}: not a COCO instances file ({e})") from None
    by_name = {p.name: p for p in images_root.rglob("*") if p.is_file()}
    return [by_name[names[i]] for i in split_ids(list(names), "tune") if names[i] in by_name]


@dataclass(frozen=True)
class MapResult:
    map50_95: float
    map50: float
    images: int
    detections: int


def find_annotations(data: Path) -> tuple[Path, Path]:
    """Return (annotation json, images root) of a COCO-layout folder, or raise VigilError."""
    if not data.is_dir():
        raise VigilError(f"data folder not found: {data}")
    jsons = sorted((data / "annotations").glob("*.json"))
    if not jsons:
        raise VigilError(f"{data}: no annotations/*.json (COCO instances file) found")
    images = data / "images"
    if not images.is_dir():
        raise VigilError(f"{data}: no images/ folder")
    return jsons[0], images


def evaluate_map(
    detector: Detector,
    data: Path,
    batch_size: int = 8,
    limit: int | None = None,
    split: str = "all",
) -> MapResult:
    """mAP@.5:.95 and mAP@.5 of ``detector`` (its own input size) on ``data`` (one split)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ann_path, images_root = find_annotations(data)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_path))
    by_name = {p.name: p for p in images_root.rglob("*") if p.is_file()}
    image_ids = split_ids(gt.getImgIds(), split)[:limit]
    pre = CpuPreprocessor(detector.input_size, batch_size)
    rows: list[np.ndarray] = []
    for start in range(0, len(image_ids), batch_size):
        ids = image_ids[start : start + batch_size]
        images = []
        for image_id in ids:
            name = gt.imgs[image_id]["file_name"]
            path = by_name.get(Path(name).name)
            img = cv2.imread(str(path)) if path else None
            if img is None:
                raise VigilError(f"{data}: image {name} is missing or unreadable")
            images.append(img)
        batch, geoms = pre(images)
        preds = detector.infer(batch)
        for image_id, pred, g in zip(ids, preds, geoms, strict=True):
            det = postprocess(pred, conf_threshold=0.001, iou_threshold=0.6, multi_label=True)
            xyxy = boxes_to_source(det.xyxy, g)
            xywh = np.concatenate((xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]), axis=1)
            cat = np.asarray(COCO80_TO_91, np.float64)[det.class_id]
            rows.append(
                np.column_stack(
                    (np.full(len(det), image_id, np.float64), xywh, det.confidence, cat)
                )
            )
    results = np.concatenate(rows) if rows else np.zeros((0, 7))
    if results.shape[0] == 0:
        return MapResult(0.0, 0.0, len(image_ids), 0)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return MapResult(float(ev.stats[0]), float(ev.stats[1]), len(image_ids), len(results))
