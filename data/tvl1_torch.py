"""Batched Dual TV-L1 optical flow in PyTorch, following OpenCV's ``optflow::DualTVL1OpticalFlow``.

The algorithm is the Dual TV-L1 scheme of Zach, Pock and Bischof (2007) in the form of Sanchez,
Meinhardt-Llopis and Facciolo, "TV-L1 Optical Flow Estimation" (IPOL 2013), with the implementation
choices that OpenCV-contrib (``modules/optflow/src/tvl1flow.cpp``) makes, so that a batched GPU run can
replace the per-pair CPU call of the pipeline's flow stage:

- input: uint8 gray values 0..255 as float32 (float input is taken to be in [0, 1] and scaled by 255,
  as OpenCV does); RGB frames are converted with OpenCV's fixed-point RGB->gray weights;
- pyramid: each level is the previous one resized by ``scale_step`` (size ``round(n * scale_step)``)
  with INTER_LINEAR (half-pixel centres, edge taps clamped); it stops before a level under 16 px or
  after ``nscales`` levels; the flow goes up a level by INTER_LINEAR resize times ``1 / scale_step``;
- per level, ``warps`` times: I1 and its centred gradient (replicated border) are remapped with
  OpenCV's bicubic remap (Keys kernel a = -0.75 at the exact float position, taps outside the
  image read 0), then at most ``outer_iterations`` x (5x5 median filter of the flow with replicated
  border, then at most ``inner_iterations`` primal-dual steps); the loops stop once the squared change
  of the flow over one step, summed over the level, is <= ``epsilon**2 * H * W``; the dual variables
  are reset at the start of each level, not of each warp;
- one primal-dual step: thresholding ``v = u + TH(rho)``, ``u = v + theta * div(p)``, then
  ``p = (p + tau/theta * grad u) / (1 + tau/theta * |grad u|)`` with forward differences (0 on the
  last row/column) and the matching backward-difference divergence;
- ``gamma != 0`` adds OpenCV's third illumination channel ``u3`` (not median filtered, not rescaled).

Each pair of a batch keeps its own stopping rule, so a pair's result does not depend on the pairs it
is batched with (the batch runs until its last pair has converged). Results are clipped to +-20 px
(the project's convention).

Two solvers share the pyramid, warping and per-warp constants:
- plain PyTorch ops (CPU, or CUDA without Triton): converged pairs are written back and dropped from
  the working batch (compaction), at one host sync per iteration;
- on CUDA with Triton: three fused kernels (primal step with the per-pair squared update by atomics,
  dual step, masked 5x5 median) read each pair's convergence flag on the device, so converged pairs
  cost one load per program and there is one host sync per outer iteration; each outer iteration
  (median + inner steps) is replayed as a CUDA graph (``cuda_graphs=False``: eager launches).

Measured on one H100 (OpenCV 5.0 on one core of the same machine's Xeon, real 224x224 crops of the
realdata clips): 451 pairs/s at batch 128 against 0.75 pairs/s, ~600x; 386 pairs/s on whole
340x256 frames against 0.61 pairs/s. Mean endpoint difference to OpenCV 0.02 px on those pairs.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

# OpenCV's defaults (opencv_contrib modules/optflow/include/opencv2/optflow.hpp), in snake case.
TVL1_TORCH_DEFAULTS = dict(
    tau=0.25,
    lambda_=0.15,
    theta=0.3,
    nscales=5,
    warps=5,
    epsilon=0.01,
    inner_iterations=30,
    outer_iterations=10,
    scale_step=0.8,
    gamma=0.0,
    median_filtering=5,
)

# Keyword spellings accepted besides the snake-case names above: OpenCV's Python keywords (with the
# three-n ``innnerIterations``) and ``lambda`` given through ``**{"lambda": ...}``.
_ALIASES = {
    "lambda": "lambda_",
    "lambd": "lambda_",
    "innnerIterations": "inner_iterations",
    "innerIterations": "inner_iterations",
    "outerIterations": "outer_iterations",
    "scaleStep": "scale_step",
    "medianFiltering": "median_filtering",
    "inner": "inner_iterations",
    "outer": "outer_iterations",
    "median": "median_filtering",
}

FLOW_BOUND = 20.0
_MIN_LEVEL_SIZE = 16  # OpenCV stops the pyramid before a level narrower or lower than this
_FLT_EPSILON = float(np.finfo(np.float32).eps)


def resolve_params(params: dict | None = None, **kwargs) -> dict:
    """Merge ``params``/``kwargs`` (snake case or OpenCV spelling) over the defaults; reject unknown keys."""
    out = dict(TVL1_TORCH_DEFAULTS)
    merged = dict(params or {})
    merged.update(kwargs)
    for key, value in merged.items():
        name = _ALIASES.get(key, key)
        if name not in out:
            raise TypeError(f"unknown TV-L1 parameter {key!r}; known: {sorted(out)}")
        out[name] = value
    if int(out["nscales"]) < 1 or int(out["warps"]) < 1:
        raise ValueError("nscales and warps must be >= 1")
    if not 0.0 < float(out["scale_step"]) < 1.0:
        raise ValueError("scale_step must be in (0, 1)")
    med = int(out["median_filtering"])
    if med > 1 and med != 5:
        raise ValueError("only median_filtering 5 (OpenCV's default) or <= 1 (off) is implemented")
    return out


# --------------------------------------------------------------------------------------------------
# input conversion


def _rgb_to_gray_u8(rgb: torch.Tensor) -> torch.Tensor:
    """OpenCV's COLOR_RGB2GRAY for uint8, bit-exact: (R*9798 + G*19235 + B*3735 + 2^14) >> 15.

    These are the 15-bit fixed-point weights of 0.299/0.587/0.114 that OpenCV 5 uses (measured on
    10^6 random pixels; the older 14-bit ones differ in 0.3% of pixels by one grey level).
    """
    x = rgb.to(torch.int32)
    y = x[..., 0] * 9798 + x[..., 1] * 19235 + x[..., 2] * 3735 + (1 << 14)
    return (y >> 15).to(torch.uint8)


def _to_gray_float(frames, device: torch.device) -> torch.Tensor:
    """(B,H,W) or (B,H,W,3) uint8/float frames -> (B,H,W) float32 gray in 0..255 on ``device``."""
    t = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(frames))
    t = t.to(device)  # uint8 travels to the GPU before the gray conversion: 4x fewer bytes
    if t.ndim == 2:
        t = t[None]
    if t.ndim == 4 and t.shape[-1] == 1:
        t = t[..., 0]
    if t.ndim == 4 and t.shape[-1] == 3:
        if t.dtype == torch.uint8:
            t = _rgb_to_gray_u8(t)
        else:  # float RGB in [0, 1]: OpenCV's float weights
            t = t[..., 0] * 0.299 + t[..., 1] * 0.587 + t[..., 2] * 0.114
    if t.ndim != 3:
        raise ValueError(f"frames must be (B,H,W) gray or (B,H,W,3) RGB, got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        return t.to(device=device, dtype=torch.float32)
    # OpenCV: convertTo(..., depth == CV_8U ? 1 : 255) -- float frames are expected in [0, 1]
    return t.to(device=device, dtype=torch.float32) * 255.0


# --------------------------------------------------------------------------------------------------
# image operations with OpenCV's conventions


def pyramid_sizes(height: int, width: int, nscales: int, scale_step: float) -> list[tuple[int, int]]:
    """Level sizes of OpenCV's TV-L1 pyramid: cv::resize(fx=fy=scale_step) rounds to nearest."""
    sizes = [(int(height), int(width))]
    for _ in range(1, int(nscales)):
        h, w = sizes[-1]
        nh, nw = int(round(h * scale_step)), int(round(w * scale_step))
        if nh < _MIN_LEVEL_SIZE or nw < _MIN_LEVEL_SIZE:
            break
        sizes.append((nh, nw))
    return sizes


def _linear_taps(n_in: int, n_out: int, scale: float, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices and weights of cv::resize INTER_LINEAR along one axis (src = (dst+0.5)*scale-0.5)."""
    f = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    i0 = np.floor(f)
    frac = (f - i0).astype(np.float32)  # OpenCV 5 keeps the position in double (measured)
    i0 = i0.astype(np.int64)
    low = i0 < 0
    high = i0 >= n_in - 1
    frac[low | high] = 0.0
    i0 = np.clip(i0, 0, n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return (
        torch.from_numpy(i0).to(device),
        torch.from_numpy(i1).to(device),
        torch.from_numpy(frac).to(device),
    )


def resize_linear(x: torch.Tensor, size: tuple[int, int], scale: tuple[float, float] | None = None) -> torch.Tensor:
    """cv::resize(INTER_LINEAR) of (..., H, W) float to ``size`` (h, w).

    ``scale`` (sy, sx) is the source step per destination pixel; OpenCV uses 1/fx when the factor is
    given (pyramid) and in/out sizes when the destination size is given (flow upsampling).
    """
    h_in, w_in = x.shape[-2:]
    h_out, w_out = size
    sy, sx = scale if scale is not None else (h_in / h_out, w_in / w_out)
    c0, c1, cw = _linear_taps(w_in, w_out, sx, x.device)
    r0, r1, rw = _linear_taps(h_in, h_out, sy, x.device)
    # horizontal pass, then vertical, as OpenCV's separable resize
    t = torch.lerp(x.index_select(-1, c0), x.index_select(-1, c1), cw)
    return torch.lerp(t.index_select(-2, r0), t.index_select(-2, r1), rw[:, None])


def centered_gradient(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """0.5 * central differences with replicated border (OpenCV's centeredGradient), (B,H,W) each."""
    p = F.pad(img[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    dx = 0.5 * (p[:, 1:-1, 2:] - p[:, 1:-1, :-2])
    dy = 0.5 * (p[:, 2:, 1:-1] - p[:, :-2, 1:-1])
    return dx, dy


def remap_bicubic(imgs: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """cv::remap(INTER_CUBIC, BORDER_CONSTANT 0) of (B,C,H,W) at (x + flow_x, y + flow_y).

    Keys cubic with a = -0.75; taps outside the image read 0, which is what ``grid_sample``'s
    bicubic mode with zero padding computes. OpenCV 5 samples at the exact float position (measured:
    agreement to 4e-5 grey levels); OpenCV 4 rounded positions to 1/32 px, a difference of up to
    ~1/64 px that we do not reproduce.
    """
    _, _, h, w = imgs.shape
    xs = torch.arange(w, device=imgs.device, dtype=torch.float32)
    ys = torch.arange(h, device=imgs.device, dtype=torch.float32)
    # clamp far-away positions first (every tap is outside there either way), then normalise
    gx = (flow[:, 0] + xs).clamp_(-4.0, w + 3.0).mul_(2.0 / max(w - 1, 1)).sub_(1.0)
    gy = (flow[:, 1] + ys[:, None]).clamp_(-4.0, h + 3.0).mul_(2.0 / max(h - 1, 1)).sub_(1.0)
    grid = torch.stack((gx, gy), dim=-1)
    return F.grid_sample(imgs, grid, mode="bicubic", padding_mode="zeros", align_corners=True)


# Median of 25 as a selection network: Batcher's odd-even merge sort for 25 inputs, pruned to the
# comparators that reach output 12 (checked exhaustively with the 0-1 principle). Entries are
# (a, b, keep): min goes to a, max to b; keep 3 = both needed, 1 = only the min, 2 = only the max.
_MEDIAN25_NETWORK = (
    (0, 1, 3), (2, 3, 3), (4, 5, 3), (6, 7, 3), (8, 9, 3), (10, 11, 3), (12, 13, 3), (14, 15, 3), (16,
    17, 3), (18, 19, 3), (20, 21, 3), (22, 23, 3), (0, 2, 3), (1, 3, 3), (4, 6, 3), (5, 7, 3), (8, 10,
    3), (9, 11, 3), (12, 14, 3), (13, 15, 3), (16, 18, 3), (17, 19, 3), (20, 22, 3), (21, 23, 3), (1, 2,
    3), (5, 6, 3), (9, 10, 3), (13, 14, 3), (17, 18, 3), (21, 22, 3), (0, 4, 3), (1, 5, 3), (2, 6, 3),
    (3, 7, 3), (8, 12, 3), (9, 13, 3), (10, 14, 3), (11, 15, 3), (16, 20, 3), (17, 21, 3), (18, 22, 3),
    (19, 23, 3), (2, 4, 3), (3, 5, 3), (10, 12, 3), (11, 13, 3), (18, 20, 3), (19, 21, 3), (1, 2, 3),
    (3, 4, 3), (5, 6, 3), (9, 10, 3), (11, 12, 3), (13, 14, 3), (17, 18, 3), (19, 20, 3), (21, 22, 3),
    (0, 8, 3), (1, 9, 3), (2, 10, 3), (3, 11, 3), (4, 12, 3), (5, 13, 3), (6, 14, 3), (7, 15, 1), (16,
    24, 3), (4, 8, 3), (5, 9, 3), (6, 10, 3), (7, 11, 3), (20, 24, 3), (2, 4, 3), (3, 5, 3), (6, 8, 3),
    (7, 9, 3), (10, 12, 3), (11, 13, 3), (18, 20, 3), (19, 21, 3), (22, 24, 3), (1, 2, 3), (3, 4, 3),
    (5, 6, 3), (7, 8, 3), (9, 10, 3), (11, 12, 3), (13, 14, 1), (17, 18, 3), (19, 20, 3), (21, 22, 3),
    (23, 24, 3), (0, 16, 2), (1, 17, 2), (2, 18, 2), (3, 19, 2), (4, 20, 2), (5, 21, 2), (6, 22, 1), (7,
    23, 1), (8, 24, 1), (8, 16, 2), (9, 17, 2), (10, 18, 1), (11, 19, 1), (12, 20, 1), (13, 21, 1), (6,
    10, 2), (7, 11, 2), (12, 16, 1), (13, 17, 1), (10, 12, 2), (11, 13, 1), (11, 12, 2),
)


def median5(u: torch.Tensor) -> torch.Tensor:
    """5x5 median filter with replicated border (cv::medianBlur(ksize=5) on float), (..., H, W)."""
    h, w = u.shape[-2:]
    lead = u.shape[:-2]
    p = F.pad(u.reshape(-1, 1, h, w), (2, 2, 2, 2), mode="replicate").reshape(*lead, h + 4, w + 4)
    v = [p[..., dy : dy + h, dx : dx + w] for dy in range(5) for dx in range(5)]
    for a, b, keep in _MEDIAN25_NETWORK:
        lo = torch.minimum(v[a], v[b]) if keep & 1 else None
        if keep & 2:
            v[b] = torch.maximum(v[a], v[b])
        if lo is not None:
            v[a] = lo
    return v[12]


# --------------------------------------------------------------------------------------------------
# one pyramid level (OpenCV's procOneScale) with plain PyTorch ops


def _forward_gradient(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences, 0 on the last column (x) / last row (y): OpenCV's forwardGradient."""
    gx = F.pad(u[..., 1:] - u[..., :-1], (0, 1))
    gy = F.pad(u[..., 1:, :] - u[..., :-1, :], (0, 0, 0, 1))
    return gx, gy


def _divergence(px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Backward-difference divergence with p(-1) = 0: the negative adjoint of _forward_gradient."""
    return px - F.pad(px[..., :-1], (1, 0)) + py - F.pad(py[..., :-1, :], (0, 0, 1, 0))


def _warp_constants(i0, i1_stack, u):
    """Bicubic warp of I1, I1x, I1y by u and the per-warp constants (OpenCV's calcGradRho).

    Returns iw (B,2,H,W) = (I1wx, I1wy), rho_c (B,H,W) = I1w - I1w_grad . u0 - I0, and inv_grad
    (B,H,W) = 1/|grad I1w|^2 (1e30 where it is below FLT_EPSILON: OpenCV's thresholding then
    takes a full +-lambda*theta step along a vanishing gradient, which this reproduces).
    """
    warped = remap_bicubic(i1_stack, u[:, :2])
    iw = warped[:, 1:3].contiguous()
    grad = iw.square().sum(1)
    rho_c = warped[:, 0] - (iw * u[:, :2]).sum(1) - i0
    inv_grad = torch.where(grad > _FLT_EPSILON, 1.0 / grad, torch.full_like(grad, 1e30))
    return iw, rho_c, inv_grad


def _primal_dual_step(u, p, iw, rho_c, inv_grad, prm):
    """One inner iteration on the working batch: returns new u, new p and per-pair sum (du)^2.

    u (b,C,H,W); p (b,2,C,H,W) holds (p_x, p_y) of each flow channel; C = 3 when gamma != 0.
    """
    l_t, theta, taut, gamma = prm["l_t"], prm["theta"], prm["taut"], prm["gamma"]
    rho = rho_c + (iw * u[:, :2]).sum(1)
    if u.shape[1] == 3:
        rho = rho + gamma * u[:, 2]
    # thresholding TH: the step along grad I1w is -rho/|grad|^2 limited to +-lambda*theta
    coef = (-rho * inv_grad).clamp_(-l_t, l_t)[:, None]
    v = u + coef * (iw if u.shape[1] == 2 else F.pad(iw, (0, 0, 0, 0, 0, 1), value=gamma))
    u_new = v.add_(_divergence(p[:, 0], p[:, 1]), alpha=theta)
    err = (u_new - u).square_().sum((1, 2, 3))
    gx, gy = _forward_gradient(u_new)
    ng = torch.hypot(gx, gy).mul_(taut).add_(1.0)
    p_new = torch.stack((gx, gy), 1).mul_(taut).add_(p).div_(ng[:, None])
    return u_new, p_new, err


def _median_flow(u: torch.Tensor) -> torch.Tensor:
    """Median-filter u1, u2 (not the illumination channel u3, as OpenCV)."""
    if u.shape[1] == 2:
        return median5(u)
    return torch.cat((median5(u[:, :2]), u[:, 2:]), 1)


def _solve_level_torch(i0, i1, u, prm) -> torch.Tensor:
    """OpenCV's procOneScale for a batch: i0, i1 (B,H,W), u (B,C,H,W); returns the new u.

    Pairs whose update fell to epsilon are written back and dropped from the working batch.
    """
    b, _, h, w = u.shape
    scaled_eps = float(np.float32(prm["epsilon"] ** 2 * h * w))
    i1x, i1y = centered_gradient(i1)
    i1_stack = torch.stack((i1, i1x, i1y), 1)
    p = u.new_zeros((b, 2) + tuple(u.shape[1:]))  # dual variables: reset per level, not per warp
    for _ in range(prm["warps"]):
        iw, rho_c, inv_grad = _warp_constants(i0, i1_stack, u)
        idx = torch.arange(b, device=u.device)
        uw, pw = u, p
        for _ in range(prm["outer_iterations"]):
            if idx.numel() == 0:
                break
            if prm["median_filtering"] > 1:
                uw = _median_flow(uw)
            for _ in range(prm["inner_iterations"]):
                uw, pw, err = _primal_dual_step(uw, pw, iw, rho_c, inv_grad, prm)
                done = err <= scaled_eps
                if bool(done.any()):
                    u = u.index_copy(0, idx[done], uw[done])
                    p = p.index_copy(0, idx[done], pw[done])
                    keep = ~done
                    idx, uw, pw = idx[keep], uw[keep], pw[keep]
                    iw, rho_c, inv_grad = iw[keep], rho_c[keep], inv_grad[keep]
                    if idx.numel() == 0:
                        break
        if idx.numel() == b:
            u, p = uw, pw
        elif idx.numel():
            u = u.index_copy(0, idx, uw)
            p = p.index_copy(0, idx, pw)
    return u


# --------------------------------------------------------------------------------------------------
# one pyramid level with fused Triton kernels (CUDA)
#
# Per inner iteration two kernels update the whole batch in place: the primal step (thresholding,
# divergence of p, new u, per-pair sum of (du)^2 by atomics) and the dual step (forward gradient
# of u, new p). Splitting there keeps both in place: each reads its neighbours only from the array
# it does not write. err_hist[k, b] is the squared update of pair b at iteration k of this warp
# (err_hist[0] = inf); a pair runs iteration k only while err_hist[k-1, b] > epsilon, so the
# stopping rule stays on the device and a converged pair costs one load per program.

try:  # Triton is optional: CPU installs need not have it, and the kernels are only built on use
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the install
    triton = None

if triton is not None:

    @triton.jit(do_not_specialize=["k", "nb", "H", "W"])
    def _primal_kernel(
        u_ptr, p_ptr, iw_ptr, rho_ptr, invg_ptr, err_ptr, k, nb, H, W,
        eps, l_t, theta, gamma, C: tl.constexpr, BLOCK: tl.constexpr,
    ):
        b = tl.program_id(1).to(tl.int64)
        if tl.load(err_ptr + (k - 1) * nb + b) > eps:
            hw = H * W
            offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            m = offs < hw
            x = offs % W
            left = m & (x > 0)
            up = m & (offs >= W)
            rc = tl.load(rho_ptr + b * hw + offs, mask=m, other=0.0)
            ig = tl.load(invg_ptr + b * hw + offs, mask=m, other=0.0)
            ix = tl.load(iw_ptr + (2 * b) * hw + offs, mask=m, other=0.0)
            iy = tl.load(iw_ptr + (2 * b + 1) * hw + offs, mask=m, other=0.0)
            ub = u_ptr + (C * b) * hw + offs
            u1 = tl.load(ub, mask=m, other=0.0)
            u2 = tl.load(ub + hw, mask=m, other=0.0)
            rho = rc + ix * u1 + iy * u2
            if C == 3:
                u3 = tl.load(ub + 2 * hw, mask=m, other=0.0)
                rho = rho + gamma * u3
            coef = tl.minimum(tl.maximum(-rho * ig, -l_t), l_t)
            pxb = p_ptr + (2 * C * b) * hw + offs  # p_x of channel c at pxb + c*hw
            pyb = pxb + C * hw  # p_y of channel c
            d1 = (tl.load(pxb, mask=m, other=0.0) - tl.load(pxb - 1, mask=left, other=0.0)
                  + tl.load(pyb, mask=m, other=0.0) - tl.load(pyb - W, mask=up, other=0.0))
            n1 = u1 + coef * ix + theta * d1
            d2 = (tl.load(pxb + hw, mask=m, other=0.0) - tl.load(pxb + hw - 1, mask=left, other=0.0)
                  + tl.load(pyb + hw, mask=m, other=0.0) - tl.load(pyb + hw - W, mask=up, other=0.0))
            n2 = u2 + coef * iy + theta * d2
            tl.store(ub, n1, mask=m)
            tl.store(ub + hw, n2, mask=m)
            e = (n1 - u1) * (n1 - u1) + (n2 - u2) * (n2 - u2)
            if C == 3:
                d3 = (tl.load(pxb + 2 * hw, mask=m, other=0.0) - tl.load(pxb + 2 * hw - 1, mask=left, other=0.0)
                      + tl.load(pyb + 2 * hw, mask=m, other=0.0) - tl.load(pyb + 2 * hw - W, mask=up, other=0.0))
                n3 = u3 + coef * gamma + theta * d3
                tl.store(ub + 2 * hw, n3, mask=m)
                e += (n3 - u3) * (n3 - u3)
            tl.atomic_add(err_ptr + k * nb + b, tl.sum(tl.where(m, e, 0.0), axis=0))

    @triton.jit(do_not_specialize=["k", "nb", "H", "W"])
    def _dual_kernel(u_ptr, p_ptr, err_ptr, k, nb, H, W, eps, taut, C: tl.constexpr, BLOCK: tl.constexpr):
        b = tl.program_id(1).to(tl.int64)
        if tl.load(err_ptr + (k - 1) * nb + b) > eps:
            hw = H * W
            offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            m = offs < hw
            x = offs % W
            right = m & (x < W - 1)
            down = m & (offs < hw - W)
            for c in tl.static_range(C):
                ub = u_ptr + (C * b + c) * hw + offs
                uc = tl.load(ub, mask=m, other=0.0)
                gx = tl.where(right, tl.load(ub + 1, mask=right, other=0.0) - uc, 0.0)
                gy = tl.where(down, tl.load(ub + W, mask=down, other=0.0) - uc, 0.0)
                ng = 1.0 + taut * tl.sqrt(gx * gx + gy * gy)
                pxb = p_ptr + (2 * C * b + c) * hw + offs
                pyb = pxb + C * hw
                tl.store(pxb, (tl.load(pxb, mask=m, other=0.0) + taut * gx) / ng, mask=m)
                tl.store(pyb, (tl.load(pyb, mask=m, other=0.0) + taut * gy) / ng, mask=m)

    @triton.jit
    def _load_clamped(base, y, x, H, W, m):
        yy = tl.minimum(tl.maximum(y, 0), H - 1)
        xx = tl.minimum(tl.maximum(x, 0), W - 1)
        return tl.load(base + yy * W + xx, mask=m, other=0.0)

    @triton.jit
    def _cas(a, b):
        return tl.minimum(a, b), tl.maximum(a, b)

    @triton.jit(do_not_specialize=["k", "nb", "H", "W"])
    def _median_kernel(src_ptr, dst_ptr, err_ptr, k, nb, H, W, eps, C: tl.constexpr, BLOCK: tl.constexpr):
        """dst = 5x5 median of src (replicated border) for u1, u2 of active pairs; copy otherwise."""
        b = tl.program_id(1).to(tl.int64)
        hw = H * W
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < hw
        y = offs // W
        x = offs % W
        active = tl.load(err_ptr + k * nb + b) > eps
        for c in tl.static_range(C):
            sb = src_ptr + (C * b + c) * hw
            db = dst_ptr + (C * b + c) * hw
            if c < 2:
                if active:
                    v0 = _load_clamped(sb, y - 2, x - 2, H, W, m); v1 = _load_clamped(sb, y - 2, x - 1, H, W, m)
                    v2 = _load_clamped(sb, y - 2, x, H, W, m); v3 = _load_clamped(sb, y - 2, x + 1, H, W, m)
                    v4 = _load_clamped(sb, y - 2, x + 2, H, W, m); v5 = _load_clamped(sb, y - 1, x - 2, H, W, m)
                    v6 = _load_clamped(sb, y - 1, x - 1, H, W, m); v7 = _load_clamped(sb, y - 1, x, H, W, m)
                    v8 = _load_clamped(sb, y - 1, x + 1, H, W, m); v9 = _load_clamped(sb, y - 1, x + 2, H, W, m)
                    v10 = _load_clamped(sb, y, x - 2, H, W, m); v11 = _load_clamped(sb, y, x - 1, H, W, m)
                    v12 = _load_clamped(sb, y, x, H, W, m); v13 = _load_clamped(sb, y, x + 1, H, W, m)
                    v14 = _load_clamped(sb, y, x + 2, H, W, m); v15 = _load_clamped(sb, y + 1, x - 2, H, W, m)
                    v16 = _load_clamped(sb, y + 1, x - 1, H, W, m); v17 = _load_clamped(sb, y + 1, x, H, W, m)
                    v18 = _load_clamped(sb, y + 1, x + 1, H, W, m); v19 = _load_clamped(sb, y + 1, x + 2, H, W, m)
                    v20 = _load_clamped(sb, y + 2, x - 2, H, W, m); v21 = _load_clamped(sb, y + 2, x - 1, H, W, m)
                    v22 = _load_clamped(sb, y + 2, x, H, W, m); v23 = _load_clamped(sb, y + 2, x + 1, H, W, m)
                    v24 = _load_clamped(sb, y + 2, x + 2, H, W, m)
                    # _MEDIAN25_NETWORK, written out
                    v0, v1 = _cas(v0, v1); v2, v3 = _cas(v2, v3); v4, v5 = _cas(v4, v5)
                    v6, v7 = _cas(v6, v7); v8, v9 = _cas(v8, v9); v10, v11 = _cas(v10, v11)
                    v12, v13 = _cas(v12, v13); v14, v15 = _cas(v14, v15); v16, v17 = _cas(v16, v17)
                    v18, v19 = _cas(v18, v19); v20, v21 = _cas(v20, v21); v22, v23 = _cas(v22, v23)
                    v0, v2 = _cas(v0, v2); v1, v3 = _cas(v1, v3); v4, v6 = _cas(v4, v6)
                    v5, v7 = _cas(v5, v7); v8, v10 = _cas(v8, v10); v9, v11 = _cas(v9, v11)
                    v12, v14 = _cas(v12, v14); v13, v15 = _cas(v13, v15); v16, v18 = _cas(v16, v18)
                    v17, v19 = _cas(v17, v19); v20, v22 = _cas(v20, v22); v21, v23 = _cas(v21, v23)
                    v1, v2 = _cas(v1, v2); v5, v6 = _cas(v5, v6); v9, v10 = _cas(v9, v10)
                    v13, v14 = _cas(v13, v14); v17, v18 = _cas(v17, v18); v21, v22 = _cas(v21, v22)
                    v0, v4 = _cas(v0, v4); v1, v5 = _cas(v1, v5); v2, v6 = _cas(v2, v6)
                    v3, v7 = _cas(v3, v7); v8, v12 = _cas(v8, v12); v9, v13 = _cas(v9, v13)
                    v10, v14 = _cas(v10, v14); v11, v15 = _cas(v11, v15); v16, v20 = _cas(v16, v20)
                    v17, v21 = _cas(v17, v21); v18, v22 = _cas(v18, v22); v19, v23 = _cas(v19, v23)
                    v2, v4 = _cas(v2, v4); v3, v5 = _cas(v3, v5); v10, v12 = _cas(v10, v12)
                    v11, v13 = _cas(v11, v13); v18, v20 = _cas(v18, v20); v19, v21 = _cas(v19, v21)
                    v1, v2 = _cas(v1, v2); v3, v4 = _cas(v3, v4); v5, v6 = _cas(v5, v6)
                    v9, v10 = _cas(v9, v10); v11, v12 = _cas(v11, v12); v13, v14 = _cas(v13, v14)
                    v17, v18 = _cas(v17, v18); v19, v20 = _cas(v19, v20); v21, v22 = _cas(v21, v22)
                    v0, v8 = _cas(v0, v8); v1, v9 = _cas(v1, v9); v2, v10 = _cas(v2, v10)
                    v3, v11 = _cas(v3, v11); v4, v12 = _cas(v4, v12); v5, v13 = _cas(v5, v13)
                    v6, v14 = _cas(v6, v14); v7 = tl.minimum(v7, v15); v16, v24 = _cas(v16, v24)
                    v4, v8 = _cas(v4, v8); v5, v9 = _cas(v5, v9); v6, v10 = _cas(v6, v10)
                    v7, v11 = _cas(v7, v11); v20, v24 = _cas(v20, v24); v2, v4 = _cas(v2, v4)
                    v3, v5 = _cas(v3, v5); v6, v8 = _cas(v6, v8); v7, v9 = _cas(v7, v9)
                    v10, v12 = _cas(v10, v12); v11, v13 = _cas(v11, v13); v18, v20 = _cas(v18, v20)
                    v19, v21 = _cas(v19, v21); v22, v24 = _cas(v22, v24); v1, v2 = _cas(v1, v2)
                    v3, v4 = _cas(v3, v4); v5, v6 = _cas(v5, v6); v7, v8 = _cas(v7, v8)
                    v9, v10 = _cas(v9, v10); v11, v12 = _cas(v11, v12); v13 = tl.minimum(v13, v14)
                    v17, v18 = _cas(v17, v18); v19, v20 = _cas(v19, v20); v21, v22 = _cas(v21, v22)
                    v23, v24 = _cas(v23, v24); v16 = tl.maximum(v0, v16); v17 = tl.maximum(v1, v17)
                    v18 = tl.maximum(v2, v18); v19 = tl.maximum(v3, v19); v20 = tl.maximum(v4, v20)
                    v21 = tl.maximum(v5, v21); v6 = tl.minimum(v6, v22); v7 = tl.minimum(v7, v23)
                    v8 = tl.minimum(v8, v24); v16 = tl.maximum(v8, v16); v17 = tl.maximum(v9, v17)
                    v10 = tl.minimum(v10, v18); v11 = tl.minimum(v11, v19); v12 = tl.minimum(v12, v20)
                    v13 = tl.minimum(v13, v21); v10 = tl.maximum(v6, v10); v11 = tl.maximum(v7, v11)
                    v12 = tl.minimum(v12, v16); v13 = tl.minimum(v13, v17); v12 = tl.maximum(v10, v12)
                    v11 = tl.minimum(v11, v13); v12 = tl.maximum(v11, v12)
                    tl.store(db + offs, v12, mask=m)
                else:
                    tl.store(db + offs, tl.load(sb + offs, mask=m, other=0.0), mask=m)
            else:
                tl.store(db + offs, tl.load(sb + offs, mask=m, other=0.0), mask=m)


_TRITON_BLOCK = 1024
_CHECK_EVERY = 10  # eager launches: look for a fully converged batch this often


def _triton_available() -> bool:
    return triton is not None


def _solve_level_triton(i0, i1, u, prm) -> torch.Tensor:
    """OpenCV's procOneScale for a batch with the Triton kernels; returns the new u (B,C,H,W).

    The work of one outer iteration (median, then ``inner_iterations`` primal/dual steps) is a fixed
    sequence of launches on fixed buffers: "errb" holds the squared updates of that block, row 0
    carrying the state of the block before. With ``prm["cuda_graphs"]`` the sequence is captured
    once per level as a CUDA graph and replayed (one launch instead of 2 * inner + 1); otherwise
    it is launched eagerly, and also checked every _CHECK_EVERY steps for a batch that has stopped.
    """
    b, c, h, w = u.shape
    inner = prm["inner_iterations"]
    scaled_eps = float(np.float32(prm["epsilon"] ** 2 * h * w))
    i1x, i1y = centered_gradient(i1)
    i1_stack = torch.stack((i1, i1x, i1y), 1)
    u = u.contiguous()
    u_alt = torch.empty_like(u)
    p = u.new_zeros((b, 2) + tuple(u.shape[1:]))
    iw = u.new_empty((b, 2, h, w))
    rho_c = u.new_empty((b, h, w))
    inv_grad = u.new_empty((b, h, w))
    errb = u.new_zeros((inner + 1, b))
    grid = (triton.cdiv(h * w, _TRITON_BLOCK), b)
    common = dict(nb=b, H=h, W=w, eps=scaled_eps, C=c, BLOCK=_TRITON_BLOCK)
    use_graph = bool(prm.get("cuda_graphs")) and u.is_cuda
    graph = None

    def block(check: bool) -> None:
        errb[0].copy_(errb[inner])
        errb[1:].zero_()
        if prm["median_filtering"] > 1:
            _median_kernel[grid](u, u_alt, errb, 0, **common)
            u.copy_(u_alt)
        for k in range(1, inner + 1):
            if check and k % _CHECK_EVERY == 1 and k > 1 and not bool((errb[k - 1] > scaled_eps).any()):
                return
            _primal_kernel[grid](
                u, p, iw, rho_c, inv_grad, errb, k, l_t=prm["l_t"], theta=prm["theta"], gamma=prm["gamma"], **common
            )
            _dual_kernel[grid](u, p, errb, k, taut=prm["taut"], **common)

    for _ in range(prm["warps"]):
        w_iw, w_rho, w_inv = _warp_constants(i0, i1_stack, u)
        iw.copy_(w_iw)
        rho_c.copy_(w_rho)
        inv_grad.copy_(w_inv)
        errb[inner].fill_(float("inf"))
        for n_outer in range(prm["outer_iterations"]):
            # one host sync per outer iteration: stop once every pair of the batch has converged
            if n_outer > 0 and not bool((errb[inner] > scaled_eps).any()):
                break
            if graph is not None:
                graph.replay()
                continue
            block(check=not use_graph)
            if use_graph:  # kernels are compiled by now: capture the block for the rest of the level
                graph = _capture(lambda: block(check=False))
                use_graph = graph is not None
    return u


_GRAPH_FAILURE: list[str] = []  # set once a capture failed: later calls launch eagerly


def _capture(fn):
    """A CUDA graph of fn(), or None (and eager launches from then on) if capture fails."""
    if _GRAPH_FAILURE:
        return None
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph
    except Exception as exc:  # pragma: no cover - depends on the CUDA/Triton install
        _GRAPH_FAILURE.append(repr(exc))
        warnings.warn(f"CUDA graph capture failed ({exc!r}); launching the TV-L1 kernels eagerly")
        return None


# --------------------------------------------------------------------------------------------------
# public API


def _resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _pick_solver(device: torch.device, backend: str | None):
    """"triton" (fused kernels) on CUDA when Triton is importable, else "torch" (plain ops)."""
    if backend not in (None, "torch", "triton"):
        raise ValueError(f"backend must be None, 'torch' or 'triton', got {backend!r}")
    if backend == "torch":
        return _solve_level_torch
    interpret = os.environ.get("TRITON_INTERPRET") == "1"  # Triton's CPU interpreter, for tests
    usable = _triton_available() and (device.type == "cuda" or interpret)
    if backend == "triton" and not usable:
        raise ValueError("backend='triton' needs Triton and a CUDA device")
    return _solve_level_triton if usable else _solve_level_torch


def _solver_params(params: dict, cuda_graphs: bool = True) -> dict:
    prm = resolve_params(params)
    theta = float(prm["theta"])
    return dict(
        warps=int(prm["warps"]),
        outer_iterations=int(prm["outer_iterations"]),
        inner_iterations=int(prm["inner_iterations"]),
        median_filtering=int(prm["median_filtering"]),
        epsilon=float(prm["epsilon"]),
        theta=theta,
        gamma=float(prm["gamma"]),
        # OpenCV passes these as float: l_t = lambda*theta, taut = tau/theta
        l_t=float(np.float32(float(prm["lambda_"]) * theta)),
        taut=float(np.float32(float(prm["tau"]) / theta)),
        nscales=int(prm["nscales"]),
        scale_step=float(prm["scale_step"]),
        cuda_graphs=bool(cuda_graphs),
    )


def tvl1_flow_batch_tensor(
    prev, next, device=None, backend: str | None = None, cuda_graphs: bool = True, **params
) -> torch.Tensor:
    """Like :func:`tvl1_flow_batch`, but returns the unclipped (B,H,W,2) float32 tensor on ``device``."""
    prm = _solver_params(params, cuda_graphs)
    dev = _resolve_device(device)
    solve = _pick_solver(dev, backend)
    # Triton launches and graph captures go to the current CUDA device: make it the requested one
    on_device = torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext()
    with torch.inference_mode(), on_device:
        i0 = _to_gray_float(prev, dev)
        i1 = _to_gray_float(next, dev)
        if i0.shape != i1.shape:
            raise ValueError(f"prev and next differ in shape: {tuple(i0.shape)} vs {tuple(i1.shape)}")
        b, h, w = i0.shape
        if h < 3 or w < 3:
            raise ValueError(f"frames must be at least 3x3 pixels, got {h}x{w}")
        if b == 0:
            return torch.zeros((0, h, w, 2), device=dev)
        step = prm["scale_step"]
        sizes = pyramid_sizes(h, w, prm["nscales"], step)
        i0s, i1s = [i0], [i1]
        for size in sizes[1:]:
            i0s.append(resize_linear(i0s[-1], size, (1.0 / step, 1.0 / step)))
            i1s.append(resize_linear(i1s[-1], size, (1.0 / step, 1.0 / step)))
        nchan = 3 if prm["gamma"] != 0.0 else 2  # gamma adds OpenCV's illumination channel u3
        u = i0.new_zeros((b, nchan) + sizes[-1])
        for lvl in range(len(sizes) - 1, -1, -1):
            u = solve(i0s[lvl], i1s[lvl], u, prm)
            if lvl == 0:
                break
            u = resize_linear(u, sizes[lvl - 1])
            u[:, :2] *= float(np.float32(1.0 / step))  # u3 is not rescaled
        return u[:, :2].permute(0, 2, 3, 1).contiguous()


def tvl1_flow_batch(
    prev, next, device=None, backend: str | None = None, cuda_graphs: bool = True, **params
) -> np.ndarray:
    """Dual TV-L1 optical flow from ``prev`` to ``next`` for a batch of frame pairs of one size.

    prev, next: (B,H,W) uint8 gray or (B,H,W,3) uint8 RGB frames, numpy or torch (float frames are
    taken in [0, 1], as OpenCV does). ``params``: TV-L1 parameters in snake case (``tau, lambda_,
    theta, nscales, warps, epsilon, inner_iterations, outer_iterations, scale_step, gamma,
    median_filtering``) or OpenCV's keywords (``innnerIterations``, ``scaleStep``, ...); the
    defaults are OpenCV's. ``device``: None picks CUDA when available. ``backend``: None (Triton
    kernels on CUDA when Triton is importable, plain PyTorch ops otherwise), "torch" or "triton".
    ``cuda_graphs``: replay each outer iteration of the Triton path as a CUDA graph (fewer launches).
    Returns (B,H,W,2) float32 (x, y) flow in pixels, clipped to +-20.
    """
    flow = tvl1_flow_batch_tensor(prev, next, device=device, backend=backend, cuda_graphs=cuda_graphs, **params)
    return flow.clamp(-FLOW_BOUND, FLOW_BOUND).cpu().numpy()


def tvl1_flow_pairs(
    pairs: Iterable[tuple],
    device=None,
    batch_size: int = 32,
    backend: str | None = None,
    **params,
) -> list[np.ndarray]:
    """TV-L1 flow for (prev, next) frame pairs of possibly different sizes.

    Pairs are grouped by frame shape and run ``batch_size`` at a time; the list that comes back
    follows the input order, each (H,W,2) float32 clipped to +-20 px.
    """
    pairs = list(pairs)
    batch_size = max(1, int(batch_size))
    groups: dict[tuple, list[int]] = {}
    for k, (a, b) in enumerate(pairs):
        groups.setdefault((tuple(a.shape), tuple(b.shape)), []).append(k)
    out: list = [None] * len(pairs)
    for members in groups.values():
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            prev = torch.stack([torch.as_tensor(pairs[k][0]) for k in chunk])
            nxt = torch.stack([torch.as_tensor(pairs[k][1]) for k in chunk])
            for k, f in zip(chunk, tvl1_flow_batch(prev, nxt, device=device, backend=backend, **params)):
                out[k] = f
    return out
