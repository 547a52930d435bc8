"""Source-video synthesis: one still image + inverse depth -> a short video seen by a moving camera.

The paper's "realistic video generation" (Sec. 3, following Depthstillation, Aleotti et al. CVPR 2021):
the still is back-projected with its depth, a virtual camera makes a small random rigid motion, the points
are forward-warped into the new view with a z-buffer, and the holes this leaves (disocclusions, the frame
border) are filled: by default with our push-pull filler (`data.hole_filling`, measured against TELEA in
docs/performance.md), or with OpenCV's TELEA as the released code does (`hole_filler="telea"`). Each
frame is warped from the previous one, so 16 small motions make a 16-frame clip.

Where we differ from the released code (`depthstillation/get_flow_from_img_datasets.py`), on purpose:
- The z-buffer is a true minimum: the nearest point that lands on a pixel wins. The reference C warper
  overwrites its buffer on every hit, so the result depends on raster order.
- Points that leave the frame are dropped. The reference clamps them, piling them up on the border.
- Points are splatted to the nearest pixel (the reference truncates toward zero).
- Depth is estimated once per still; later frames reuse the warped depth (the z of the splatted points,
  holes filled from their neighbours, see `fill_depth_holes`). `redepth_fn` restores the released code's
  re-estimation on every generated frame.
- The image keeps its own size and aspect ratio (the reference resizes everything to 384x384) and the
  normalised inverse depth is not quantised to 16 bits.
- The ground-truth flow of every warp comes out of the same computation (the reference comments it out
  and later runs TV-L1 on the frames, which the pipeline still does for training).

Conventions: images are RGB uint8 (H, W, 3); pixel (x, y) is the centre of column x, row y; a 4x4 motion
T maps a point P of the current camera to T[:3, :3] @ P + T[:3, 3] in the next camera; flow[y, x] =
(projected position) - (x, y) in pixels, mapping frame k to frame k+1.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence, Union

import cv2
import numpy as np
import torch

from data.hole_filling import fill_holes_array, fill_holes_batch

# Depthstillation's normalised pinhole camera: focal 0.58 of the image size, principal point at the centre.
FOCAL_FRACTION = 0.58
CENTRE_FRACTION = 0.5
# Depth from MiDaS inverse depth, as the reference does it: 1 / (normalised disparity + 0.005), capped at 100.
DISPARITY_OFFSET = 0.005
MAX_DEPTH = 100.0
# The paper's camera motion ("coefficient 0.01"): per-axis magnitudes, each with a random sign.
ROTATION_RANGE_DEG = (1.0, 2.0)
TRANSLATION_RANGE = (0.01, 0.02)
INPAINT_RADIUS = 3
# How holes of the warped frames are filled: our batched torch push-pull (the default), or OpenCV's TELEA
# (the released code's choice; CPU only, and about 3x slower than push-pull on one thread).
HOLE_FILLERS = ("pushpull", "telea")
DEFAULT_HOLE_FILLER = "pushpull"
# Points closer to the camera plane than this (or behind it) are dropped instead of projected.
MIN_Z = 1e-6

_INDEX_MASK = 0xFFFFFFFF


# ----------------------------------------------------------------------------------------------------------
# Depth, camera, motion


def depth_from_inverse_depth(inverse_depth):
    """Depth from relative inverse depth (MiDaS output) the way Depthstillation does it.

    The inverse depth is min-max normalised to [0, 1] per image (what MiDaS's 16-bit PNG holds), then
    depth = 1 / (normalised + 0.005), capped at 100. A constant map normalises to 0 (depth 100 everywhere),
    as MiDaS's writer does. Accepts a numpy array (returns float32 numpy) or a torch tensor (returns a float32
    tensor on the same device).
    """
    if isinstance(inverse_depth, torch.Tensor):
        inv = inverse_depth.to(torch.float32)
        if not torch.isfinite(inv).all():
            raise ValueError("inverse depth contains NaN or infinite values")
        lo, hi = inv.min(), inv.max()
        span = hi - lo
        norm = (inv - lo) / span if span > 0 else torch.zeros_like(inv)
        return (1.0 / (norm + DISPARITY_OFFSET)).clamp(max=MAX_DEPTH)
    inv = np.asarray(inverse_depth, dtype=np.float32)
    if not np.isfinite(inv).all():
        raise ValueError("inverse depth contains NaN or infinite values")
    lo, hi = inv.min(), inv.max()
    norm = (inv - lo) / (hi - lo) if hi > lo else np.zeros_like(inv)
    return np.minimum(1.0 / (norm + np.float32(DISPARITY_OFFSET)), np.float32(MAX_DEPTH)).astype(np.float32)


def camera_intrinsics(height: int, width: int) -> np.ndarray:
    """Depthstillation's intrinsics: fx = 0.58 W, fy = 0.58 H, cx = 0.5 W, cy = 0.5 H (3x3 float64)."""
    return np.array(
        [[FOCAL_FRACTION * width, 0.0, CENTRE_FRACTION * width],
         [0.0, FOCAL_FRACTION * height, CENTRE_FRACTION * height],
         [0.0, 0.0, 1.0]],
        dtype=np.float64,
    )


def axis_angle_to_matrix(axis_angle) -> np.ndarray:
    """Rodrigues' formula: rotation vector (axis times angle in radians) -> 3x3 rotation matrix."""
    v = np.asarray(axis_angle, dtype=np.float64).reshape(3)
    angle = float(np.linalg.norm(v))
    if angle == 0.0:
        return np.eye(3)
    kx, ky, kz = v / angle
    k = np.array([[0.0, -kz, ky], [kz, 0.0, -kx], [-ky, kx, 0.0]])
    return np.eye(3) + np.sin(angle) * k + (1.0 - np.cos(angle)) * (k @ k)


def motion_matrix(axis_angle, translation) -> np.ndarray:
    """4x4 rigid motion T = Translation @ Rotation (monodepth2's `transformation_from_parameters`)."""
    t = np.eye(4)
    t[:3, :3] = axis_angle_to_matrix(axis_angle)
    t[:3, 3] = np.asarray(translation, dtype=np.float64).reshape(3)
    return t


def sample_camera_motion(
    rng: np.random.Generator,
    rotation_range_deg: tuple[float, float] = ROTATION_RANGE_DEG,
    translation_range: tuple[float, float] = TRANSLATION_RANGE,
) -> np.ndarray:
    """One random camera motion (4x4 float64), as in the released generation code.

    Per axis: translation magnitude uniform in [0.01, 0.02) and rotation magnitude uniform in [1, 2) degrees,
    each with an independent random sign. The three rotation components form an axis-angle vector.
    Draw order (fixed, so a seed reproduces a clip): translation magnitudes, translation signs, rotation
    magnitudes, rotation signs.
    """
    t_lo, t_hi = translation_range
    r_lo, r_hi = np.deg2rad(rotation_range_deg[0]), np.deg2rad(rotation_range_deg[1])
    translation = (rng.random(3) * (t_hi - t_lo) + t_lo) * rng.choice((-1.0, 1.0), size=3)
    rotation = (rng.random(3) * (r_hi - r_lo) + r_lo) * rng.choice((-1.0, 1.0), size=3)
    return motion_matrix(rotation, translation)


def item_seed(item_id: str, seed: int = 0) -> int:
    """A stable per-item seed from the run's seed and the item id (same on every machine and Python)."""
    digest = hashlib.blake2b(f"{int(seed)}:{item_id}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # 63 bits: valid for numpy and torch


# ----------------------------------------------------------------------------------------------------------
# Forward warping


Array = Union[torch.Tensor, np.ndarray]


class WarpResult(NamedTuple):
    """One forward warp. Tensors from `warp_forward`, numpy arrays from `warp_forward_loop`."""

    image: Array  # (H, W, 3) uint8, the splatted colours; zero at holes
    depth: Array  # (H, W) float32, z of the splatted point in the new camera; zero at holes
    hole: Array  # (H, W) bool, pixels no point landed on
    flow: Array  # (H, W, 2) float32, projected minus source position; zero for points behind the camera
    valid: Array  # (H, W) bool, source pixel lands in the frame, in front of the camera, and is visible


def _composite_projection(K: np.ndarray, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Back-project, move, project in one affine map: q = depth * (K R K^-1) [x, y, 1] + K t."""
    K = np.asarray(K, dtype=np.float64)
    T = np.asarray(T, dtype=np.float64)
    if K.shape != (3, 3) or T.shape != (4, 4):
        raise ValueError(f"K must be 3x3 and T 4x4, got {K.shape} and {T.shape}")
    if not (np.isfinite(K).all() and np.isfinite(T).all()):
        raise ValueError("K and T must be finite")
    return K @ T[:3, :3] @ np.linalg.inv(K), K @ T[:3, 3]


class PixelGrid(NamedTuple):
    xs: torch.Tensor  # (H, W) float32 column of each pixel
    ys: torch.Tensor  # (H, W) float32 row of each pixel
    index: torch.Tensor  # (H * W,) int64 raster index of each pixel


def pixel_grid(height: int, width: int, device="cpu") -> PixelGrid:
    """Pixel-centre coordinates and raster indices, reusable across the warps of one video."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32, device=device),
        torch.arange(width, dtype=torch.float32, device=device),
        indexing="ij",
    )
    return PixelGrid(xs, ys, torch.arange(height * width, dtype=torch.int64, device=device))


def warp_forward(image: torch.Tensor, depth: torch.Tensor, K: np.ndarray, T: np.ndarray,
                 grid: PixelGrid | None = None) -> WarpResult:
    """Forward-warp `image` (H, W, C uint8 tensor) with its finite `depth` (H, W float32) by motion `T`.

    Every pixel is back-projected, moved and projected, then splatted to the nearest pixel. Where several
    points land on one pixel the nearest wins: each point's key packs its depth's float32 bits (monotone for
    positive floats) above its source index, and `scatter_reduce(amin)` keeps the smallest key per pixel --
    order-independent, hence deterministic on CPU and CUDA; equal depths go to the lower source index.
    Points off the frame or behind the camera are dropped. No Python loop over pixels; no host sync.
    (In-place operations below only save allocations; each line is one step of the warp.)
    """
    height, width = depth.shape
    n = height * width
    device = depth.device
    M, b = _composite_projection(K, T)
    xs, ys, index = grid if grid is not None else pixel_grid(height, width, device)
    depth = depth.to(torch.float32)

    def project(row: int) -> torch.Tensor:  # depth * (M @ [x, y, 1])[row] + b[row]
        return (xs * float(M[row, 0])).add_(ys, alpha=float(M[row, 1])).add_(float(M[row, 2])).mul_(depth) \
            .add_(float(b[row]))

    z = project(2)
    behind = z <= MIN_Z
    z.masked_fill_(behind, 1.0)  # keeps the divisions finite; these points are dropped below
    u = project(0).div_(z)
    v = project(1).div_(z)
    # Flow is built channel-first (contiguous writes) and handed out as an (H, W, 2) view.
    flow = torch.empty((2, height, width), dtype=torch.float32, device=device)
    torch.sub(u, xs, out=flow[0])
    torch.sub(v, ys, out=flow[1])
    flow.masked_fill_(behind, 0.0)

    # Clamping to [-1, W] keeps the integer conversion safe; -1 and W both fall outside after rounding.
    ui = u.clamp_(-1.0, float(width)).add_(0.5).floor_().to(torch.int64)
    vi = v.clamp_(-1.0, float(height)).add_(0.5).floor_().to(torch.int64)
    outside = behind | (ui < 0) | (ui >= width) | (vi < 0) | (vi >= height)
    # Points that are not splatted go to a spare slot n, so no boolean indexing (and no device sync) is needed.
    target = vi.mul_(width).add_(ui).masked_fill_(outside, n).reshape(-1)
    key = z.view(torch.int32).to(torch.int64).bitwise_left_shift_(32).reshape(-1).bitwise_or_(index)
    # The empty-pixel key is above every real key (finite float bits < 0x7F800000) and names source n,
    # a spare black pixel of depth 0, so holes need no masking below.
    no_hit = (0x7FFFFFFF << 32) | n
    zbuf = torch.full((n + 1,), no_hit, dtype=torch.int64, device=device)
    zbuf.scatter_reduce_(0, target, key, reduce="amin", include_self=True)
    winner = zbuf[:n] & _INDEX_MASK
    hole = winner == n

    pixels = image.reshape(n, -1)
    spare = torch.zeros((1, pixels.shape[1]), dtype=image.dtype, device=device)
    out_image = torch.cat((pixels, spare)).index_select(0, winner)
    out_depth = torch.cat((z.reshape(-1), spare[0, :1].to(z.dtype))).index_select(0, winner)
    visible = torch.zeros(n + 1, dtype=torch.bool, device=device)
    visible.index_fill_(0, winner, True)
    return WarpResult(
        image=out_image.reshape(image.shape),
        depth=out_depth.reshape(height, width),
        hole=hole.reshape(height, width),
        flow=flow.permute(1, 2, 0),
        valid=visible[:n].reshape(height, width),
    )


def warp_forward_loop(image: np.ndarray, depth: np.ndarray, K: np.ndarray, T: np.ndarray) -> WarpResult:
    """The same warp as `warp_forward`, written as a plain per-pixel Python loop (numpy in, numpy out).

    The baseline for the benchmark and the parity test: project each pixel, keep it if it lands in the frame
    in front of the camera, and let it replace the pixel's occupant only if strictly nearer (raster order
    gives the lower source index on ties, like the packed key of `warp_forward`).
    """
    image = np.asarray(image)
    depth = np.asarray(depth, dtype=np.float32)
    height, width = depth.shape
    M, b = _composite_projection(K, T)
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = (float(a) for a in M.reshape(-1))
    b0, b1, b2 = (float(a) for a in b)
    zbuf = np.full((height, width), np.inf)
    owner = np.full((height, width), -1, dtype=np.int64)
    landed = np.full((height, width, 2), -1, dtype=np.int64)
    flow = np.zeros((height, width, 2), dtype=np.float32)
    z_of = np.zeros((height, width), dtype=np.float64)
    for y in range(height):
        for x in range(width):
            d = float(depth[y, x])
            z = d * (m20 * x + m21 * y + m22) + b2
            if not z > MIN_Z:
                continue
            u = (d * (m00 * x + m01 * y + m02) + b0) / z
            v = (d * (m10 * x + m11 * y + m12) + b1) / z
            flow[y, x] = (u - x, v - y)
            z_of[y, x] = z
            tx, ty = int(np.floor(u + 0.5)), int(np.floor(v + 0.5))
            if 0 <= tx < width and 0 <= ty < height:
                landed[y, x] = (tx, ty)
                if z < zbuf[ty, tx]:
                    zbuf[ty, tx] = z
                    owner[ty, tx] = y * width + x
    hole = owner < 0
    out_image = np.zeros_like(image)
    out_depth = np.zeros((height, width), dtype=np.float32)
    valid = np.zeros((height, width), dtype=bool)
    for ty in range(height):
        for tx in range(width):
            src = owner[ty, tx]
            if src >= 0:
                sy, sx = divmod(int(src), width)
                out_image[ty, tx] = image[sy, sx]
                out_depth[ty, tx] = z_of[sy, sx]
                valid[sy, sx] = True
    return WarpResult(image=out_image, depth=out_depth, hole=hole, flow=flow, valid=valid)


def fill_holes(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Fill the holes (`hole`, bool H x W) of an RGB uint8 image (H, W, 3) with the default filler.

    Returns a new uint8 image; pixels outside the holes are unchanged. Push-pull (see `data.hole_filling`);
    `inpaint_holes` is TELEA. ValueError for anything but those types and shapes, or an image all hole.
    """
    return fill_holes_array(image, hole)


def check_hole_filler(name: str) -> str:
    if name not in HOLE_FILLERS:
        raise ValueError(f"unknown hole_filler {name!r}: use one of {', '.join(HOLE_FILLERS)}")
    return name


def inpaint_holes(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Fill the holes of a warped RGB uint8 frame with OpenCV TELEA, radius 3 (as the released code does)."""
    if not hole.any():
        return image
    return cv2.inpaint(np.ascontiguousarray(image), hole.astype(np.uint8), INPAINT_RADIUS, cv2.INPAINT_TELEA)


def fill_depth_holes(depth: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Fill the holes of a warped float32 depth map, in inverse depth, without overshoot.

    Cracks (holes with a hit 8-neighbour) take the mean inverse depth of their hit neighbours; wider holes
    (the frame border, disocclusions) take the nearest filled value. Not TELEA: OpenCV's TELEA on float data
    extrapolates along gradients and on small values (inverse depth lies in [0.01, 1]) returns garbage, and
    the noise it leaves in the depth grows frame by frame through the chain (tested: holes grew from 8 %
    to 35 % of the frame over 16 frames; with this fill they stay near 8 %).
    """
    if not hole.any():
        return depth
    if hole.all():
        raise ValueError("the camera motion left no visible pixel; cannot continue the video")
    known = (~hole).astype(np.float32)
    inverse = np.zeros(depth.shape, dtype=np.float32)
    np.divide(1.0, depth, out=inverse, where=~hole)
    total = cv2.boxFilter(inverse, -1, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT)
    count = cv2.boxFilter(known, -1, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT)
    crack = hole & (count > 0.5)
    inverse[crack] = total[crack] / count[crack]
    rest = hole & ~crack
    if rest.any():
        _, labels = cv2.distanceTransformWithLabels(rest.astype(np.uint8), cv2.DIST_L2, 5,
                                                    labelType=cv2.DIST_LABEL_PIXEL)
        filled = ~rest
        position = np.zeros(int(labels.max()) + 1, dtype=np.int64)
        position[labels[filled]] = np.flatnonzero(filled)
        inverse[rest] = inverse.reshape(-1)[position[labels[rest]]]
    return np.where(hole, 1.0 / inverse, depth).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# The video


@dataclass
class SynthesisResult:
    frames: np.ndarray  # (T, H, W, 3) uint8
    flow: np.ndarray | None  # (T-1, H, W, 2) float32, frame k -> k+1; None unless return_flow
    valid: np.ndarray | None  # (T-1, H, W) bool, where flow[k] is ground truth (lands in frame k+1, visible)
    motions: list[np.ndarray] = field(default_factory=list)  # the 4x4 motion behind each warped frame
    holes: np.ndarray | None = None  # (T, H, W) bool, pixels inpainted in each frame (before inpainting)


def _check_inputs(image, inverse_depth, num_frames):
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
    inverse_depth = np.asarray(inverse_depth, dtype=np.float32)
    if inverse_depth.shape != image.shape[:2]:
        raise ValueError(f"inverse depth is {inverse_depth.shape}, image is {image.shape[:2]}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    return np.ascontiguousarray(image), inverse_depth


def synthesize_video(
    image: np.ndarray,
    inverse_depth: np.ndarray,
    num_frames: int = 16,
    seed: int = 0,
    device: str | torch.device = "cpu",
    redepth_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    return_flow: bool = False,
    include_still: bool = False,
    motions: Sequence[np.ndarray] | None = None,
    zero_motion: bool = False,
    hole_filler: str = DEFAULT_HOLE_FILLER,
) -> SynthesisResult:
    """Turn a still (RGB uint8 H, W, 3) and its relative inverse depth (H, W) into `num_frames` frames.

    Frame k is frame k-1 (frame 0: the still) forward-warped by a random camera motion and inpainted; the
    depth travels with it (the splatted z, holes inpainted), so depth is estimated once per image unless
    `redepth_fn` (RGB uint8 frame -> inverse depth) is given, which re-estimates it on every frame as the
    released code does. Frame 0 is the first warped view, as in the released code; `include_still=True`
    makes frame 0 the still itself (then num_frames - 1 warps). Motions come from `numpy.random.default_rng
    (seed)` (use `item_seed` for per-item seeds), or are given explicitly as 4x4 matrices (one per warp), or
    are all identity with `zero_motion=True`. Deterministic for a seed; bitwise on CPU.
    `return_flow=True` adds the ground-truth flow frame k -> k+1 and its valid mask. `hole_filler` is one of
    HOLE_FILLERS; push-pull runs on `device` (the frames stay there between warps), TELEA on the CPU.
    On CPU the images are small for torch's threads: callers running many workers should use
    `torch.set_num_threads(1)` per worker (two threads on a busy 2-core machine ran 10x slower).
    """
    image, inverse_depth = _check_inputs(image, inverse_depth, num_frames)
    check_hole_filler(hole_filler)
    height, width = inverse_depth.shape
    device = torch.device(device)
    K = camera_intrinsics(height, width)
    num_warps = num_frames - 1 if include_still else num_frames

    if motions is not None:
        motions = [np.asarray(m, dtype=np.float64) for m in motions]
        if len(motions) != num_warps or any(m.shape != (4, 4) for m in motions):
            raise ValueError(f"need {num_warps} motions of shape 4x4 for {num_frames} frames "
                             f"(include_still={include_still}), got {[m.shape for m in motions]}")
    elif zero_motion:
        motions = [np.eye(4) for _ in range(num_warps)]
    else:
        rng = np.random.default_rng(seed)
        motions = [sample_camera_motion(rng) for _ in range(num_warps)]

    grid = pixel_grid(height, width, device)
    frame = torch.from_numpy(image).to(device)  # the frame the next warp starts from
    depth = torch.from_numpy(depth_from_inverse_depth(inverse_depth)).to(device)
    frames, holes, flows, valids = [], [], [], []
    if include_still:
        frames.append(image)
        holes.append(np.zeros((height, width), dtype=bool))
    for k, motion in enumerate(motions):
        if redepth_fn is not None and k > 0:
            inv = np.asarray(redepth_fn(frames[-1]), dtype=np.float32)
            if inv.shape != (height, width):
                raise ValueError(f"redepth_fn returned shape {inv.shape}, expected {(height, width)}")
            depth = torch.from_numpy(depth_from_inverse_depth(inv)).to(device)
        warped = warp_forward(frame, depth, K, motion, grid)
        # The flow of the warp from the still to frame 0 is not between two frames of the video.
        if return_flow and (include_still or k > 0):
            flows.append(warped.flow.cpu().numpy())
            valids.append(warped.valid.cpu().numpy())
        hole = warped.hole.cpu().numpy()
        if hole_filler == "telea":
            frames.append(inpaint_holes(warped.image.cpu().numpy(), hole))
            frame = torch.from_numpy(frames[-1]).to(device)
        else:
            frame = fill_holes_batch(warped.image[None], warped.hole[None])[0]
            frames.append(frame.cpu().numpy())
        holes.append(hole)
        if redepth_fn is None and k + 1 < len(motions):
            depth = torch.from_numpy(fill_depth_holes(warped.depth.cpu().numpy(), hole)).to(device)

    flow = valid = None
    if return_flow:
        flow = np.stack(flows) if flows else np.zeros((0, height, width, 2), np.float32)
        valid = np.stack(valids) if valids else np.zeros((0, height, width), bool)
    return SynthesisResult(frames=np.stack(frames), flow=flow, valid=valid, motions=list(motions),
                           holes=np.stack(holes))
