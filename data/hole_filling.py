"""Fast hole filling for synthesised frames: a masked push-pull pyramid in torch, batched, CPU or CUDA.

Forward warping leaves holes (cracks between splatted points, disocclusions, the frame border). The released
Depthstillation code fills them with OpenCV's TELEA, which took three quarters of our synthesis time and
runs on the CPU only. This filler (push-pull, Gortler et al., "The Lumigraph", SIGGRAPH 1996) does:

1. Push: build a pyramid of mask-weighted averages. Each level is the previous one filtered by the
   binomial kernel [1, 3, 3, 1] / 8 in each axis with stride 2, colours weighted by how much of them is
   known; a coarse pixel counts as fully known once 1/8 of its kernel weight was known (`FULL_CONFIDENCE`).
2. Pull: from the coarsest level needed (1 x 1 at most) down, each level keeps its own (partly) known
   colour and takes the rest from the bilinearly upsampled coarser level. Hole pixels of the full-resolution image take the
   bilinear value of level 1 ...
3. ... except cracks: a hole with at least `CRACK_NEIGHBOURS` known 8-neighbours takes their mean.

Every value is a convex combination of known pixels (no overshoot), and known pixels are returned
bit-exactly. The choices above (kernel, confidence, crack rule) were picked by measurement against TELEA
on real frames with the hole masks of our own warps (tests/bench/bench_hole_filling.py, docs/performance.md).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# A coarse pixel is fully known once this fraction of its kernel weight comes from known pixels.
FULL_CONFIDENCE = 1.0 / 8.0
# A hole with at least this many known 8-neighbours is a crack: it takes their mean.
CRACK_NEIGHBOURS = 2
_KERNEL_SUM = 64.0  # [1, 3, 3, 1] outer [1, 3, 3, 1]


def _padded_shape(height: int, width: int) -> tuple[int, int]:
    """One zero pixel on each side, one more where odd: the stride-2 4-tap filter then gives ceil(n / 2)."""
    return height + 2 + height % 2, width + 2 + width % 2


def _binomial_sums(p: torch.Tensor) -> torch.Tensor:
    """(N, 4, Hp, Wp) padded -> (N, 4, ceil(H/2), ceil(W/2)): [1, 3, 3, 1] stride-2 sums in both axes.
    Written as strided slices: on one CPU thread this is several times faster than conv2d or pooling."""
    q = p[..., 0:-3:2] + p[..., 3::2]
    q.add_(p[..., 1:-2:2] + p[..., 2:-1:2], alpha=3)
    r = q[..., 0:-3:2, :] + q[..., 3::2, :]
    r.add_(q[..., 1:-2:2, :] + q[..., 2:-1:2, :], alpha=3)
    return r


def _next_level(p: torch.Tensor) -> torch.Tensor:
    """Push one level: premultiplied colours (channels 0-2) and confidence (channel 3), zero-padded."""
    sums = _binomial_sums(p)
    n, c, h, w = sums.shape
    out = sums.new_zeros((n, c, *_padded_shape(h, w)))
    inner = out[:, :, 1:h + 1, 1:w + 1]
    known_fraction = sums[:, 3:]
    confidence = known_fraction.mul(1.0 / (_KERNEL_SUM * FULL_CONFIDENCE)).clamp_(max=1.0)
    # colour = sums / known_fraction, stored premultiplied by its confidence
    torch.mul(sums[:, :3], confidence / known_fraction.clamp(min=1e-12), out=inner[:, :3])
    inner[:, 3:] = confidence
    return out


def _interior(p: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return p[:, :, 1:height + 1, 1:width + 1]


def check_hole_batch(images: torch.Tensor, holes: torch.Tensor) -> None:
    """Raise ValueError unless images is (B, H, W, 3) uint8 and holes (B, H, W) bool on the same device."""
    if not isinstance(images, torch.Tensor) or not isinstance(holes, torch.Tensor):
        raise ValueError(f"images and holes must be torch tensors, got {type(images).__name__} and "
                         f"{type(holes).__name__}")
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"images must be RGB uint8 (B, H, W, 3), got {images.dtype} {tuple(images.shape)}")
    if holes.dtype != torch.bool or tuple(holes.shape) != tuple(images.shape[:3]):
        raise ValueError(f"holes must be bool (B, H, W) = {tuple(images.shape[:3])}, got {holes.dtype} "
                         f"{tuple(holes.shape)}")
    if holes.device != images.device:
        raise ValueError(f"images are on {images.device}, holes on {holes.device}")


def fill_holes_batch(images: torch.Tensor, holes: torch.Tensor) -> torch.Tensor:
    """Fill the holes of a batch of RGB uint8 images (B, H, W, 3) where `holes` (B, H, W, bool) is True.

    Returns a new uint8 tensor on the same device; pixels outside the holes are copied unchanged. An image
    that is all hole has nothing to fill from: ValueError naming its batch index.
    """
    check_hole_batch(images, holes)
    batch, height, width, _ = images.shape
    b, y, x = holes.nonzero(as_tuple=True)  # the hole pixels, needed at the end anyway
    if len(b) == 0:
        return images.clone()
    empty = torch.bincount(b, minlength=batch) == height * width
    if bool(empty.any()):
        raise ValueError(f"image {int(empty.nonzero()[0])} of the batch is all hole: nothing to fill it from")

    # Level 0, planar and zero-padded: premultiplied colours and the known mask.
    p = torch.zeros((batch, 4, *_padded_shape(height, width)), dtype=torch.float32, device=images.device)
    level0 = _interior(p, height, width)
    level0[:, :3] = images.permute(0, 3, 1, 2)
    level0[:, 3] = ~holes
    level0[:, :3] *= level0[:, 3:]

    levels = [_next_level(p)]
    sizes = [(-(-height // 2), -(-width // 2))]
    # Coarser levels cannot change a level that is fully known everywhere, so the push stops there (the
    # output is the same as with the full pyramid); narrow holes need only a few levels.
    while sizes[-1] != (1, 1) and not bool((_interior(levels[-1], *sizes[-1])[:, 3] == 1.0).all()):
        levels.append(_next_level(levels[-1]))
        sizes.append((-(-sizes[-1][0] // 2), -(-sizes[-1][1] // 2)))

    # Pull: coarsest level normalised, then each finer level blends in what it does not know.
    h, w = sizes[-1]
    top = _interior(levels[-1], h, w)
    filled = top[:, :3] / top[:, 3:].clamp(min=1e-12)
    for p_level, (h, w) in zip(reversed(levels[:-1]), reversed(sizes[:-1])):
        level = _interior(p_level, h, w)
        # Coarse pixel j sits between fine pixels 2j and 2j+1 (the kernel's centre), hence scale 2 with
        # align_corners=False, cropped where the fine level was odd.
        up = F.interpolate(filled, scale_factor=2.0, mode="bilinear", align_corners=False)[..., :h, :w]
        filled = torch.addcmul(level[:, :3], 1.0 - level[:, 3:], up)

    # Full resolution, hole pixels only: bilinear from level 1, or the crack mean.
    # Level-1 pixel j is centred on level-0 position 2j + 0.5, so level-0 pixel y sits at y / 2 - 1/4.
    values = _bilinear_at(filled.contiguous(), b, y.to(torch.float32) * 0.5 - 0.25,
                          x.to(torch.float32) * 0.5 - 0.25)
    around = _neighbour_sums(p, b, y, x)  # (N, 4): known colour sums and count of the 8 neighbours
    crack = around[:, 3:] >= CRACK_NEIGHBOURS
    values = torch.where(crack, around[:, :3] / around[:, 3:].clamp(min=1.0), values)

    out = images.clone()
    out.view(-1, 3)[(b * height + y) * width + x] = values.add_(0.5).floor_().clamp_(0, 255).to(torch.uint8)
    return out


def _neighbour_sums(p: torch.Tensor, b: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Sums (N, 4) over the 8 neighbours of pixels (b, y, x) of the padded level 0 (one gather: on a CPU
    this beats a full-image 3x3 filter, holes being a small part of the image)."""
    _, channels, hp, wp = p.shape
    offsets = torch.tensor([dy * wp + dx for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx],
                           device=p.device)
    centre = (b * channels * hp + y + 1) * wp + x + 1
    planes = torch.arange(channels, device=p.device) * (hp * wp)
    index = centre[:, None, None] + offsets[None, :, None] + planes  # (N, 8, C)
    # index_select on the flat view: several times faster than advanced indexing on a CPU
    return p.reshape(-1).index_select(0, index.reshape(-1)).view(index.shape).sum(dim=1)


def _bilinear_at(f: torch.Tensor, b: torch.Tensor, fy: torch.Tensor, fx: torch.Tensor) -> torch.Tensor:
    """Bilinear samples (N, C) of f (B, C, h, w) at rows fy, columns fx (pixel units), edges replicated."""
    _, channels, h, w = f.shape
    y0f, x0f = fy.floor(), fx.floor()
    wy, wx = (fy - y0f)[:, None], (fx - x0f)[:, None]
    y0, x0 = y0f.to(torch.int64), x0f.to(torch.int64)
    y1, x1 = (y0 + 1).clamp_(max=h - 1), (x0 + 1).clamp_(max=w - 1)
    y0, x0 = y0.clamp_(min=0), x0.clamp_(min=0)
    base = (b * (channels * h * w))[:, None] + torch.arange(channels, device=f.device) * (h * w)  # (N, C)
    corners = torch.stack((y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1), dim=1)  # (N, 4)
    index = base[:, None, :] + corners[:, :, None]  # (N, 4, C)
    v = f.reshape(-1).index_select(0, index.reshape(-1)).view(index.shape)
    return torch.lerp(torch.lerp(v[:, 0], v[:, 1], wx), torch.lerp(v[:, 2], v[:, 3], wx), wy)


def fill_holes_array(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """`fill_holes_batch` for one numpy image (H, W, 3 uint8) and mask (H, W bool); checks the inputs."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an RGB uint8 numpy array (H, W, 3), got "
                         f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}")
    if not isinstance(hole, np.ndarray) or hole.dtype != bool or hole.shape != image.shape[:2]:
        raise ValueError(f"hole must be a bool numpy array of shape {image.shape[:2]}, got "
                         f"{getattr(hole, 'dtype', type(hole).__name__)} {getattr(hole, 'shape', '')}")
    if hole.all():
        raise ValueError("the image is all hole: nothing to fill it from")
    images = torch.from_numpy(np.ascontiguousarray(image))[None]
    return fill_holes_batch(images, torch.from_numpy(np.ascontiguousarray(hole))[None])[0].numpy()
