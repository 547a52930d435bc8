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

Each pair of a batch keeps its own stopping rule: pairs that have converged are taken out of the
working batch (compaction), so a batch costs what its pairs cost, and a pair's result does not
depend on the other pairs of its batch. Results are clipped to +-20 px (the project's convention).

On CUDA, if Triton is importable, the primal-dual step, the median filter and the per-pair stopping
rule run as three fused Triton kernels with the convergence masks kept on the device (no host sync
inside the inner loop); otherwise (and on the CPU) plain PyTorch ops are used. Both follow the same
arithmetic; see ``tests/test_tvl1_torch.py`` for the agreement with OpenCV.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

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
    """OpenCV's COLOR_RGB2GRAY for uint8: (R*4899 + G*9617 + B*1868 + 2^13) >> 14, exactly."""
    x = rgb.to(torch.int32)
    y = x[..., 0] * 4899 + x[..., 1] * 9617 + x[..., 2] * 1868 + (1 << 13)
    return (y >> 14).to(torch.uint8)


def _to_gray_float(frames, device: torch.device) -> torch.Tensor:
    """(B,H,W) or (B,H,W,3) uint8/float frames -> (B,H,W) float32 gray in 0..255 on ``device``."""
    t = torch.as_tensor(frames) if not isinstance(frames, torch.Tensor) else frames
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


def median5(u: torch.Tensor) -> torch.Tensor:
    """5x5 median filter with replicated border (cv::medianBlur(ksize=5) on float), (B,C,H,W)."""
    b, c, h, w = u.shape
    p = F.pad(u, (2, 2, 2, 2), mode="replicate")
    win = p.unfold(2, 5, 1).unfold(3, 5, 1).reshape(b, c, h, w, 25)
    return win.median(dim=-1).values


# --------------------------------------------------------------------------------------------------
# the solver (plain PyTorch ops; the CUDA fast path lives in _tvl1_triton)


def _forward_gradient(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences, 0 on the last column (x) / last row (y): OpenCV's forwardGradient."""
    gx = F.pad(u[..., 1:] - u[..., :-1], (0, 1))
    gy = F.pad(u[..., 1:, :] - u[..., :-1, :], (0, 0, 0, 1))
    return gx, gy


def _divergence(px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Backward-difference divergence with p(-1) = 0: the negative adjoint of _forward_gradient."""
    return px - F.pad(px[..., :-1], (1, 0)) + py - F.pad(py[..., :-1, :], (0, 0, 1, 0))


class _WarpState:
    """Per-warp constants of the compacted (still iterating) part of a batch."""

    def __init__(self, iw: torch.Tensor, rho_c: torch.Tensor, inv_grad: torch.Tensor):
        self.iw = iw  # (b, C, H, W): I1wx, I1wy (and gamma for u3)
        self.rho_c = rho_c  # (b, 1, H, W)
        self.inv_grad = inv_grad  # (b, 1, H, W): 1/|grad I1w|^2, "infinite" where it vanishes

    def select(self, keep: torch.Tensor) -> "_WarpState":
        return _WarpState(self.iw[keep], self.rho_c[keep], self.inv_grad[keep])


def _primal_dual_step(u, p, ws: _WarpState, l_t: float, theta: float, taut: float):
    """One inner iteration on the working batch: returns new u, new p and per-pair sum (du)^2."""
    rho = ws.rho_c + (ws.iw * u).sum(1, keepdim=True)
    # thresholding TH: the step along grad I1w is -rho/|grad|^2 limited to +-lambda*theta
    coef = (-rho * ws.inv_grad).clamp_(-l_t, l_t)
    u_new = torch.addcmul(u, coef, ws.iw)  # v
    u_new.add_(_divergence(p[:, 0], p[:, 1]), alpha=theta)
    err = (u_new - u).square_().sum((1, 2, 3))
    gx, gy = _forward_gradient(u_new)
    ng = torch.hypot(gx, gy).mul_(taut).add_(1.0)
    p_new = torch.stack((gx, gy), 1).mul_(taut).add_(p).div_(ng[:, None])
    return u_new, p_new, err


def _warp_constants(i0, i1_stack, u, gamma: float) -> _WarpState:
    """Bicubic warp of I1, I1x, I1y by u and the per-warp constants (OpenCV's calcGradRho)."""
    warped = remap_bicubic(i1_stack, u[:, :2])
    i1w, iwx, iwy = warped[:, 0:1], warped[:, 1:2], warped[:, 2:3]
    grad = iwx * iwx + iwy * iwy
    rho_c = i1w - iwx * u[:, 0:1] - iwy * u[:, 1:2] - i0[:, None]
    inv_grad = torch.where(grad > _FLT_EPSILON, 1.0 / grad, torch.full_like(grad, 1e30))
    parts = [iwx, iwy]
    if u.shape[1] == 3:
        parts.append(torch.full_like(iwx, gamma))
    return _WarpState(torch.cat(parts, 1), rho_c, inv_grad)


def _solve_level_torch(i0, i1, u, prm) -> torch.Tensor:
    """procOneScale of OpenCV for a batch: i0,i1 (B,H,W), u (B,C,H,W) updated and returned."""
    b, _, h, w = u.shape
    l_t = float(prm["lambda_"]) * float(prm["theta"])
    theta = float(prm["theta"])
    taut = float(prm["tau"]) / theta
    scaled_eps = float(np.float32(float(prm["epsilon"]) ** 2 * h * w))
    med = int(prm["median_filtering"]) > 1
    i1x, i1y = centered_gradient(i1)
    i1_stack = torch.stack((i1, i1x, i1y), 1)
    p = u.new_zeros((b, 2) + tuple(u.shape[1:]))  # (B, direction x/y, C, H, W)
    for _ in range(int(prm["warps"])):
        ws = _warp_constants(i0, i1_stack, u, float(prm["gamma"]))
        idx = torch.arange(b, device=u.device)
        uw, pw = u, p
        for _ in range(int(prm["outer_iterations"])):
            if idx.numel() == 0:
                break
            if med:
                uw = torch.cat((median5(uw[:, :2]), uw[:, 2:]), 1) if uw.shape[1] > 2 else median5(uw)
            for _ in range(int(prm["inner_iterations"])):
                uw, pw, err = _primal_dual_step(uw, pw, ws, l_t, theta, taut)
                done = err <= scaled_eps
                if bool(done.any()):
                    u = u.index_copy(0, idx[done], uw[done])
                    p = p.index_copy(0, idx[done], pw[done])
                    keep = ~done
                    idx, uw, pw, ws = idx[keep], uw[keep], pw[keep], ws.select(keep)
                    if idx.numel() == 0:
                        break
        if idx.numel() == b:
            u, p = uw, pw
        elif idx.numel():
            u = u.index_copy(0, idx, uw)
            p = p.index_copy(0, idx, pw)
    return u


# --------------------------------------------------------------------------------------------------
# public API


def _resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _use_triton(device: torch.device, backend: str | None) -> bool:
    if backend == "torch" or device.type != "cuda":
        if backend == "triton" and device.type != "cuda":
            raise ValueError("the triton backend needs a CUDA device")
        return False
    try:
        from data import _tvl1_triton  # noqa: F401
    except Exception:
        if backend == "triton":
            raise
        return False
    return True


def tvl1_flow_batch_tensor(prev, next, device=None, backend: str | None = None, **params) -> torch.Tensor:
    """Like :func:`tvl1_flow_batch` but returns the (B,H,W,2) float32 tensor on ``device``, unclipped."""
    prm = resolve_params(params)
    dev = _resolve_device(device)
    with torch.inference_mode():
        i0 = _to_gray_float(prev, dev)
        i1 = _to_gray_float(next, dev)
        if i0.shape != i1.shape:
            raise ValueError(f"prev and next differ in shape: {tuple(i0.shape)} vs {tuple(i1.shape)}")
        b, h, w = i0.shape
        if h < 3 or w < 3:
            raise ValueError(f"frames must be at least 3x3, got {h}x{w}")
        if b == 0:
            return torch.zeros((0, h, w, 2), device=dev)
        sizes = pyramid_sizes(h, w, int(prm["nscales"]), float(prm["scale_step"]))
        step = float(prm["scale_step"])
        i0s, i1s = [i0], [i1]
        for lvl in range(1, len(sizes)):
            i0s.append(resize_linear(i0s[-1], sizes[lvl], (1.0 / step, 1.0 / step)))
            i1s.append(resize_linear(i1s[-1], sizes[lvl], (1.0 / step, 1.0 / step)))
        nchan = 3 if float(prm["gamma"]) != 0.0 else 2
        u = i0.new_zeros((b, nchan) + sizes[-1])
        solve = _solve_level_torch
        if _use_triton(dev, backend):
            from data import _tvl1_triton

            solve = _tvl1_triton.solve_level
        for lvl in range(len(sizes) - 1, -1, -1):
            u = solve(i0s[lvl], i1s[lvl], u, prm)
            if lvl == 0:
                break
            up = resize_linear(u, sizes[lvl - 1])
            up[:, :2] *= 1.0 / step  # u3 (gamma) is not rescaled
            u = up.contiguous()
        return u[:, :2].permute(0, 2, 3, 1).contiguous()


def tvl1_flow_batch(prev, next, device=None, backend: str | None = None, **params) -> np.ndarray:
    """Dual TV-L1 flow from ``prev`` to ``next`` for a batch of frame pairs of one size.

    prev, next: (B,H,W) uint8 gray or (B,H,W,3) uint8 RGB, numpy or torch (float frames are taken in
    [0, 1], as OpenCV does). ``params``: TV-L1 parameters in snake case (``tau, lambda_, theta,
    nscales, warps, epsilon, inner_iterations, outer_iterations, scale_step, gamma,
    median_filtering``) or OpenCV's keywords (``innnerIterations`` ...); defaults are OpenCV's.
    ``backend``: None (Triton kernels on CUDA when available, else PyTorch ops), "torch" or "triton".
    Returns (B,H,W,2) float32 (x, y) flow, clipped to +-20 px.
    """
    flow = tvl1_flow_batch_tensor(prev, next, device=device, backend=backend, **params)
    return flow.clamp_(-FLOW_BOUND, FLOW_BOUND).cpu().numpy()


def tvl1_flow_pairs(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    device=None,
    batch_size: int = 32,
    backend: str | None = None,
    **params,
) -> list[np.ndarray]:
    """TV-L1 flow for a list of (prev, next) frame pairs of possibly different sizes.

    Pairs are grouped by size and run ``batch_size`` at a time; the result list follows the input
    order, each (H,W,2) float32 clipped to +-20 px.
    """
    pairs = list(pairs)
    groups: dict[tuple, list[int]] = {}
    for k, (a, b) in enumerate(pairs):
        groups.setdefault((tuple(np.shape(a)), tuple(np.shape(b))), []).append(k)
    out: list[np.ndarray | None] = [None] * len(pairs)
    for members in groups.values():
        for start in range(0, len(members), max(1, int(batch_size))):
            chunk = members[start : start + max(1, int(batch_size))]
            prev = _stack([pairs[k][0] for k in chunk])
            nxt = _stack([pairs[k][1] for k in chunk])
            flows = tvl1_flow_batch(prev, nxt, device=device, backend=backend, **params)
            for k, f in zip(chunk, flows):
                out[k] = f
    return out  # type: ignore[return-value]


def _stack(frames: Sequence) -> torch.Tensor:
    return torch.stack([torch.as_tensor(np.asarray(f)) if not isinstance(f, torch.Tensor) else f for f in frames])
