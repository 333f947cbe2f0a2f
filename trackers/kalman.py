"""The constant-velocity Kalman filter of DeepSORT and ByteTrack, over arrays of tracks.

State per track ``(x, y, a, h, vx, vy, va, vh)``: box centre, aspect ratio ``w / h``, height
(source pixels) and their velocities per frame; the measurement is ``(x, y, a, h)``. Noise is
proportional to the box height, with the weights of the DeepSORT paper (1/20 position, 1/160
velocity). Every function takes all tracks at once: ``mean (N, 8) float64``,
``cov (N, 8, 8) float64``, measurements ``(N, 4)``. The per-track algebra is the reference
implementation's; only the loop over tracks is gone.
"""

from __future__ import annotations

import numpy as np

# 0.95 quantile of the chi-square distribution with 4 (resp. 2) degrees of freedom: the
# Mahalanobis gate of DeepSORT (MATLAB's chi2inv, as in the reference).
CHI2_95_4D = 9.4877
CHI2_95_2D = 5.9915

_W_POS = 1.0 / 20
_W_VEL = 1.0 / 160
_F = np.eye(8)
_F[:4, 4:] = np.eye(4)


def xyxy_to_xyah(xyxy: np.ndarray) -> np.ndarray:
    """``(N, 4)`` corners -> ``(N, 4)`` centre x, centre y, aspect ``w / h``, height.

    Computed in the input's dtype (float32 detections give the reference's float32 values)."""
    wh = xyxy[:, 2:] - xyxy[:, :2]
    out = np.empty_like(xyxy)
    out[:, :2] = xyxy[:, :2] + wh / 2
    out[:, 2] = wh[:, 0] / wh[:, 1]
    out[:, 3] = wh[:, 1]
    return out


def xyah_to_xyxy(xyah: np.ndarray) -> np.ndarray:
    """``(N, >=4)`` centre/aspect/height -> ``(N, 4)`` corners (same dtype)."""
    h = xyah[:, 3]
    w = xyah[:, 2] * h
    tl_x = xyah[:, 0] - w / 2
    tl_y = xyah[:, 1] - h / 2
    return np.stack((tl_x, tl_y, tl_x + w, tl_y + h), axis=1)


def _diag(std: np.ndarray) -> np.ndarray:
    """``(N, k)`` standard deviations -> ``(N, k, k)`` diagonal covariances."""
    n, k = std.shape
    out = np.zeros((n, k, k), std.dtype)
    idx = np.arange(k)
    out[:, idx, idx] = std * std
    return out


def initiate(measurement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """New tracks from unassociated measurements ``(N, 4)`` xyah: zero velocity, uncertainty
    proportional to the height. Returns ``mean (N, 8)``, ``cov (N, 8, 8)`` (float64)."""
    z = np.asarray(measurement)
    if z.shape[0] == 0:
        return np.zeros((0, 8)), np.zeros((0, 8, 8))
    h = z[:, 3]
    mean = np.concatenate((z, np.zeros_like(z)), axis=1).astype(np.float64)
    # the height terms in the measurement's dtype, the constants in float64: as the reference
    std = np.stack((2 * _W_POS * h, 10 * _W_VEL * h), axis=1).astype(np.float64)
    p, v = std[:, 0], std[:, 1]
    const = np.ones_like(p)
    std8 = np.stack((p, p, 1e-2 * const, p, v, v, 1e-5 * const, v), axis=1)
    return mean, _diag(std8)


def predict(mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One frame forward for every track: ``mean' = F mean``, ``cov' = F cov F^T + Q(h)``."""
    h = mean[:, 3]
    std = np.stack(
        (
            _W_POS * h,
            _W_POS * h,
            np.full_like(h, 1e-2),
            _W_POS * h,
            _W_VEL * h,
            _W_VEL * h,
            np.full_like(h, 1e-5),
            _W_VEL * h,
        ),
        axis=1,
    )
    new_mean = mean @ _F.T
    new_cov = _F @ (cov @ _F.T) + _diag(std)
    return new_mean, new_cov


def project(mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """State -> measurement space: ``(N, 4)`` mean and ``(N, 4, 4)`` innovation covariance."""
    h = mean[:, 3]
    std = np.stack((_W_POS * h, _W_POS * h, np.full_like(h, 1e-1), _W_POS * h), axis=1)
    return mean[:, :4], cov[:, :4, :4] + _diag(std)


def update(
    mean: np.ndarray, cov: np.ndarray, measurement: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Correct ``N`` tracks with one measurement each (``(N, 4)`` xyah)."""
    if mean.shape[0] == 0:
        return mean, cov
    z_mean, s = project(mean, cov)
    pht = cov[:, :, :4]  # P H^T: H selects the first four state components
    # K = P H^T S^-1, solved rather than inverted (S is symmetric positive definite)
    gain = np.linalg.solve(s, pht.transpose(0, 2, 1)).transpose(0, 2, 1)
    innovation = measurement - z_mean
    new_mean = mean + np.einsum("nij,nj->ni", gain, innovation)
    new_cov = cov - gain @ s @ gain.transpose(0, 2, 1)
    return new_mean, new_cov


def gating_distance(
    mean: np.ndarray, cov: np.ndarray, measurements: np.ndarray, only_position: bool = False
) -> np.ndarray:
    """Squared Mahalanobis distance of every measurement ``(M, 4)`` xyah to every track's
    projected state: ``(N, M)`` float64. Compare with :data:`CHI2_95_4D` (``CHI2_95_2D`` when
    ``only_position``)."""
    n, m = mean.shape[0], measurements.shape[0]
    if n == 0 or m == 0:
        return np.zeros((n, m))
    z_mean, s = project(mean, cov)
    k = 2 if only_position else 4
    d = measurements[None, :, :k] - z_mean[:, None, :k]  # (N, M, k)
    chol = np.linalg.cholesky(s[:, :k, :k])
    # L y = d^T, per track; the squared norm of y is the squared Mahalanobis distance
    y = np.linalg.solve(chol, d.transpose(0, 2, 1))
    return np.einsum("nkm,nkm->nm", y, y)


def gate(
    mean: np.ndarray, cov: np.ndarray, measurements: np.ndarray, threshold: float = CHI2_95_4D
) -> np.ndarray:
    """``(N, M)`` bool: which measurements ``(M, 4)`` xyah lie inside each track's gate
    (squared Mahalanobis distance at most ``threshold``), the same answer as comparing
    :func:`gating_distance`, computed sparsely: a squared Mahalanobis distance is at least
    each coordinate's own ``d_k^2 / S_kk``, so pairs failing any of those cheap tests are out
    without the full product, which then runs only for the pairs left."""
    n, m = mean.shape[0], measurements.shape[0]
    inside = np.zeros((n, m), bool)
    if n == 0 or m == 0:
        return inside
    z_mean, s = project(mean, cov)
    bound = threshold * np.diagonal(s, axis1=1, axis2=2)  # (N, 4)
    # the position tests over every pair (two (N, M) arrays), the size tests on those left
    dx = measurements[None, :, 0] - z_mean[:, 0, None]
    near = dx * dx <= bound[:, 0, None]
    dy = measurements[None, :, 1] - z_mean[:, 1, None]
    near &= dy * dy <= bound[:, 1, None]
    ti, mi = np.nonzero(near)
    dp = measurements[mi] - z_mean[ti]  # (P, 4)
    keep = (dp * dp <= bound[ti]).all(axis=1)
    ti, mi, dp = ti[keep], mi[keep], dp[keep]
    if ti.size:
        s_inv = np.linalg.inv(s)
        inside[ti, mi] = np.einsum("pi,pij,pj->p", dp, s_inv[ti], dp) <= threshold
    return inside
