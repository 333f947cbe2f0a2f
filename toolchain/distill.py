"""Recovery fine-tuning of a pruned YOLOv5 by distillation from the unpruned one.

No labels: the teacher's head outputs on the same augmented images are the targets, so any
frames the user has (their own cameras' footage) serve. Per level, with ``p_t`` the teacher's
objectness probability:

- objectness: binary cross-entropy of the student's logit against ``p_t``, mean over all cells
  (normalizing by the teacher's total objectness instead, as the two terms below, measured
  worse: 0.019 against 0.051 mAP on the tune split after 200 steps at ratio 0.3);
- class probabilities: cross-entropy against the teacher's, weighted by ``p_t``;
- box: squared error of the sigmoid-ed box terms (``tx, ty, tw, th``), weighted by ``p_t``;
- features (``feature_weight``): every ``Conv`` block's output against the teacher's output at
  the channels pruning kept (``feature_hints``), as relative squared error. Structured pruning
  keeps channel identities, so each student channel has a teacher channel to reconstruct: a
  dense signal that keeps the student close to the teacher's representation, which is what
  lets a few hundred unlabeled images suffice without overfitting them.

Images: ``(H, W, 3) uint8`` BGR of any size; each training sample is a random scale/translate/
flip of one image or a 2x2 mosaic of four, letterboxed to ``(3, S, S)`` RGB float32 in [0, 1]
(the serving input). Batch ``k`` is drawn from ``default_rng((seed, k))``, so a resumed run
sees exactly the batches it would have seen.

The checkpoint (one safetensors file, written atomically every ``save_every`` steps) holds the
student's weights, the optimizer's state and the step; ``resume`` continues from it.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from models.yolov5 import Conv, YOLOv5
from pipeline.types import VigilError

PAD = 114


@dataclass(frozen=True)
class DistillSettings:
    steps: int = 600
    batch: int = 16
    lr: float = 1e-3
    weight_decay: float = 5e-4
    warmup: int = 30
    imgsz: int = 320
    mosaic: float = 0.5  # probability that a sample is a 2x2 mosaic
    feature_weight: float = 1.0  # weight of the feature term (0: outputs only)
    seed: int = 0
    save_every: int = 50


def _affine(img: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Random scale (0.5-1.5 of the letterbox fit), translation and flip -> ``(S, S, 3)``."""
    h, w = img.shape[:2]
    scale = size / max(h, w) * rng.uniform(0.5, 1.5)
    tx = rng.uniform(0.0, 1.0) * (size - w * scale)
    ty = rng.uniform(0.0, 1.0) * (size - h * scale)
    m = np.array([[scale, 0.0, tx], [0.0, scale, ty]], np.float64)
    if rng.random() < 0.5:
        m[0] = [-scale, 0.0, size - tx]
    return cv2.warpAffine(img, m, (size, size), borderValue=(PAD, PAD, PAD))


def _sample(
    images: Sequence[np.ndarray], size: int, mosaic: float, rng: np.random.Generator
) -> np.ndarray:
    if rng.random() < mosaic:
        half = size // 2
        tiles = [_affine(images[int(i)], half, rng) for i in rng.integers(len(images), size=4)]
        out = np.concatenate((np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)), 0)
    else:
        out = _affine(images[int(rng.integers(len(images)))], size, rng)
    gain = rng.uniform(0.7, 1.3)  # brightness / contrast jitter
    bias = rng.uniform(-20.0, 20.0)
    return np.clip(out.astype(np.float32) * gain + bias, 0, 255)


def make_batch(images: Sequence[np.ndarray], settings: DistillSettings, step: int) -> torch.Tensor:
    """Batch ``step``: ``(B, 3, S, S) float32`` RGB in [0, 1]."""
    rng = np.random.default_rng((settings.seed, step))
    batch = np.stack(
        [_sample(images, settings.imgsz, settings.mosaic, rng) for _ in range(settings.batch)]
    )
    return torch.from_numpy(np.ascontiguousarray(batch[..., ::-1].transpose(0, 3, 1, 2) / 255.0))


def distill_loss(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss between per-level raw head outputs ``(B, na, ny, nx, 5 + nc)``; returns the total
    and its three parts (for the progress bar)."""
    obj_l = cls_l = box_l = torch.zeros(())
    for s, t in zip(student, teacher, strict=True):
        p_t = torch.sigmoid(t)
        w = p_t[..., 4]
        norm = w.sum().clamp(min=1.0)
        obj_l = obj_l + F.binary_cross_entropy_with_logits(s[..., 4], w)
        cls = F.binary_cross_entropy_with_logits(s[..., 5:], p_t[..., 5:], reduction="none")
        cls_l = cls_l + (cls.mean(-1) * w).sum() / norm
        box = (torch.sigmoid(s[..., :4]) - p_t[..., :4]).pow(2).sum(-1)
        box_l = box_l + (box * w).sum() / norm
    total = obj_l + cls_l + 5.0 * box_l
    parts = {"obj": obj_l, "cls": cls_l, "box": box_l}
    return total, {k: float(v.detach()) for k, v in parts.items()}


Hint = tuple[str, torch.Tensor]  # (Conv block name, teacher channel of each student channel)


def _bn_rows(bn: torch.nn.BatchNorm2d) -> torch.Tensor:
    """``(C, 4) float64``: weight, bias, running mean and variance per channel."""
    assert bn.running_mean is not None and bn.running_var is not None
    cols = [bn.weight, bn.bias, bn.running_mean, bn.running_var]
    return torch.stack([c.detach().double() for c in cols], 1)


def feature_hints(student: YOLOv5, teacher: YOLOv5) -> list[Hint]:
    """For every ``Conv`` block, the teacher channel each student channel was kept from.

    Call right after pruning: pruning copies the kept channels' BatchNorm parameters unchanged,
    so matching the (weight, bias, mean, var) rows finds the indices exactly.
    """
    teacher_modules = dict(teacher.named_modules())
    hints: list[Hint] = []
    for name, m in student.named_modules():
        t = teacher_modules.get(name)
        if not (isinstance(m, Conv) and isinstance(t, Conv)):
            continue
        if not (isinstance(m.bn, torch.nn.BatchNorm2d) and isinstance(t.bn, torch.nn.BatchNorm2d)):
            continue
        rows = [_bn_rows(b) for b in (m.bn, t.bn)]
        dist = torch.cdist(rows[0], rows[1])
        best, idx = dist.min(1)
        if bool((best > 1e-6).any()):
            raise VigilError(f"{name}: the student's channels are not a subset of the teacher's")
        hints.append((name, idx))
    return hints


class _Features:
    """Forward hooks that keep the outputs of named modules of ``net`` (latest call only)."""

    def __init__(self, net: torch.nn.Module, names: Sequence[str]) -> None:
        self.out: dict[str, torch.Tensor] = {}
        modules = dict(net.named_modules())
        self.handles = [modules[n].register_forward_hook(self._keeper(n)) for n in names]

    def _keeper(self, name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: object, output: torch.Tensor) -> None:
            self.out[name] = output

        return hook

    def __enter__(self) -> _Features:
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()


def feature_loss(
    hints: Sequence[Hint], student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Mean over hinted blocks of ``|s - t[:, idx]|^2 / |t[:, idx]|^2``."""
    total = torch.zeros(())
    for name, idx in hints:
        t = teacher[name][:, idx]
        total = total + (student[name] - t).pow(2).mean() / t.pow(2).mean().clamp(min=1e-6)
    return total / max(1, len(hints))


def _lr_factor(step: int, s: DistillSettings) -> float:
    if step < s.warmup:
        return (step + 1) / s.warmup
    progress = (step - s.warmup) / max(1, s.steps - s.warmup)
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))


def _optimizer(net: YOLOv5, s: DistillSettings) -> torch.optim.AdamW:
    decay = [p for p in net.parameters() if p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.ndim <= 1]
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": s.weight_decay},
        {"params": no_decay},
    ]
    return torch.optim.AdamW(
        groups,
        lr=s.lr,
        weight_decay=0.0,
    )


def save_checkpoint(path: Path, net: YOLOv5, opt: torch.optim.Optimizer, step: int) -> None:
    """Student weights + optimizer state + step, atomically (``.tmp`` then rename)."""
    from safetensors.torch import save_file

    tensors = {f"net.{k}": v.detach().contiguous() for k, v in net.state_dict().items()}
    state = opt.state_dict()
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            tensors[f"opt.{idx}.{key}"] = torch.as_tensor(value).contiguous()
    meta = {"step": str(step), "param_groups": json.dumps(state["param_groups"])}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, object], int]:
    """(student state dict, optimizer state dict, step) from ``save_checkpoint``'s file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (OSError, ValueError) as e:
        raise VigilError(f"{path}: unreadable distillation checkpoint ({e})") from None
    if "step" not in meta:
        raise VigilError(f"{path}: not a Vigil distillation checkpoint")
    net = {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, key = k.split(".", 2)
            opt_state.setdefault(int(idx), {})[key] = v
    opt = {"state": opt_state, "param_groups": json.loads(meta["param_groups"])}
    return net, opt, int(meta["step"])


@dataclass
class DistillResult:
    steps: int
    seconds: float
    first_loss: float
    last_loss: float  # mean over the last 20 steps

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def distill(
    student: YOLOv5,
    teacher: YOLOv5,
    images: Sequence[np.ndarray],
    settings: DistillSettings,
    checkpoint: Path,
    resume: dict[str, object] | None = None,
    start_step: int = 0,
    progress: Callable[[int, dict[str, float]], None] | None = None,
    hints: Sequence[Hint] = (),
) -> DistillResult:
    """Fine-tune ``student`` in place toward ``teacher``; checkpoints to ``checkpoint``.

    ``resume``/``start_step`` come from ``load_checkpoint`` (the student must already hold the
    checkpoint's weights). ``progress(step, losses)`` is called after every step. ``hints``
    (``feature_hints``, taken right after pruning) turn on the feature term.
    """
    if not images:
        raise VigilError("distillation needs images: none were given")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student.train()
    for p in student.parameters():
        p.requires_grad_(True)
    opt = _optimizer(student, settings)
    if resume is not None:
        opt.load_state_dict(resume)
    hints = hints if settings.feature_weight > 0 else ()
    names = [n for n, _ in hints]
    t0 = time.perf_counter()
    losses: list[float] = []
    with _Features(student, names) as s_feats, _Features(teacher, names) as t_feats:
        for step in range(start_step, settings.steps):
            for group in opt.param_groups:
                group["lr"] = settings.lr * _lr_factor(step, settings)
            x = make_batch(images, settings, step).float()
            with torch.no_grad():
                target = teacher.raw(x)
            loss, parts = distill_loss(student.raw(x), target)
            if hints:
                feat = feature_loss(hints, s_feats.out, t_feats.out)
                loss = loss + settings.feature_weight * feat
                parts["feat"] = float(feat.detach())
            if not torch.isfinite(loss):
                raise VigilError(f"distillation diverged at step {step} (loss {float(loss)})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 10.0)
            opt.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(step + 1, {"loss": losses[-1], **parts})
            if (step + 1) % settings.save_every == 0 or step + 1 == settings.steps:
                save_checkpoint(checkpoint, student, opt, step + 1)
    student.eval()
    tail = losses[-20:] or [float("nan")]
    return DistillResult(
        steps=settings.steps,
        seconds=time.perf_counter() - t0,
        first_loss=losses[0] if losses else float("nan"),
        last_loss=float(np.mean(tail)),
    )
