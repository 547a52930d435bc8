"""Previews of synthesized source videos: an animated GIF and a contact sheet (frames, depth, flow).

The contact sheet looks like Fig. 1/2 of the paper: the first row holds the inverse depth and the frames,
the second row the colour-wheel key and the flow from each shown frame to the next, coloured the Middlebury
way (Baker et al., "A Database and Evaluation Methodology for Optical Flow"): hue = direction, saturation
= speed relative to the largest flow of the clip, black = no valid flow.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from data.atomic import atomic_write

# Middlebury colour wheel: number of hues in each transition red-yellow-green-cyan-blue-magenta-red.
_WHEEL_SEGMENTS = (("RY", 15), ("YG", 6), ("GC", 4), ("CB", 11), ("BM", 13), ("MR", 6))


def _color_wheel() -> np.ndarray:
    """(55, 3) float array of RGB colours in [0, 255] around the Middlebury wheel."""
    ramps = []
    for name, n in _WHEEL_SEGMENTS:
        up = np.floor(255.0 * np.arange(n) / n)
        down = 255.0 - up
        full = np.full(n, 255.0)
        zero = np.zeros(n)
        ramps.append({
            "RY": (full, up, zero),
            "YG": (down, full, zero),
            "GC": (zero, full, up),
            "CB": (zero, down, full),
            "BM": (up, zero, full),
            "MR": (full, zero, down),
        }[name])
    return np.concatenate([np.stack(r, axis=1) for r in ramps])


_WHEEL = _color_wheel()


def flow_to_color(flow: np.ndarray, max_flow: float | None = None, valid: np.ndarray | None = None) -> np.ndarray:
    """Colour-code a flow field (H, W, 2; u right, v down) as RGB uint8 with the Middlebury wheel.

    `max_flow` sets the speed shown at full saturation (default: the largest valid magnitude); faster flow is
    drawn darker. Zero flow is white; invalid or non-finite pixels are black.
    """
    flow = np.asarray(flow, dtype=np.float64)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow must be (H, W, 2), got {flow.shape}")
    u, v = flow[..., 0], flow[..., 1]
    ok = np.isfinite(u) & np.isfinite(v)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    u = np.where(ok, u, 0.0)
    v = np.where(ok, v, 0.0)
    radius = np.hypot(u, v)
    if max_flow is None:
        max_flow = float(radius[ok].max()) if ok.any() else 0.0
    scale = max(float(max_flow), 1e-9)
    u, v, radius = u / scale, v / scale, radius / scale

    n = len(_WHEEL)
    angle = np.arctan2(-v, -u) / np.pi  # in [-1, 1]
    position = (angle + 1.0) / 2.0 * (n - 1)
    k0 = np.floor(position).astype(np.int64)
    k1 = (k0 + 1) % n
    frac = (position - k0)[..., None]
    colour = ((1.0 - frac) * _WHEEL[k0] + frac * _WHEEL[k1]) / 255.0
    r = radius[..., None]
    colour = np.where(r <= 1.0, 1.0 - r * (1.0 - colour), colour * 0.75)
    colour = np.where(ok[..., None], colour, 0.0)
    return np.floor(255.0 * colour + 0.5).clip(0, 255).astype(np.uint8)


def color_wheel_key(size: int = 128) -> np.ndarray:
    """A square RGB image of the flow colour coding (flow pointing from the centre; outside the disc black)."""
    c = (size - 1) / 2.0
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    flow = np.stack([(xs - c) / c, (ys - c) / c], axis=-1)
    return flow_to_color(flow, max_flow=1.0, valid=np.hypot(flow[..., 0], flow[..., 1]) <= 1.0)


def depth_to_color(inverse_depth: np.ndarray) -> np.ndarray:
    """Min-max normalised inverse depth in OpenCV's magma colour map (near = bright), RGB uint8."""
    inv = np.asarray(inverse_depth, dtype=np.float64)
    inv = np.where(np.isfinite(inv), inv, np.nan)
    lo, hi = np.nanmin(inv), np.nanmax(inv)
    norm = (inv - lo) / (hi - lo) if hi > lo else np.zeros_like(inv)
    grey = np.floor(255.0 * np.nan_to_num(norm) + 0.5).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(grey, cv2.COLORMAP_MAGMA), cv2.COLOR_BGR2RGB)


def _label(cell: np.ndarray, text: str) -> np.ndarray:
    cell = cell.copy()
    scale = max(0.35, cell.shape[1] / 500.0)
    origin = (4, int(16 * scale / 0.5))
    cv2.putText(cell, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(cell, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return cell


def _fit(cell: np.ndarray, height: int, width: int) -> np.ndarray:
    if cell.shape[:2] == (height, width):
        return cell
    interp = cv2.INTER_AREA if cell.shape[1] > width else cv2.INTER_LINEAR
    return cv2.resize(cell, (width, height), interpolation=interp)


def contact_sheet(
    frames: np.ndarray,
    inverse_depth: np.ndarray | None,
    flow: np.ndarray | None,
    valid: np.ndarray | None = None,
    max_columns: int = 6,
    cell_width: int = 256,
) -> np.ndarray:
    """RGB uint8 sheet: row 1 inverse depth + frames, row 2 flow key + flow of each shown frame to the next."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 (T, H, W, 3) with T >= 1, got {frames.dtype} {frames.shape}")
    t, h, w = frames.shape[:3]
    cw = min(cell_width, w)
    ch = max(1, round(h * cw / w))
    shown = np.unique(np.linspace(0, max(t - 2, 0) if flow is not None and t > 1 else t - 1,
                                  min(max_columns, t)).round().astype(int))
    blank = np.zeros((ch, cw, 3), np.uint8)

    top = [_label(_fit(depth_to_color(inverse_depth), ch, cw), "inverse depth") if inverse_depth is not None
           else blank]
    top += [_label(_fit(frames[i], ch, cw), f"frame {i}") for i in shown]
    rows = [np.concatenate(top, axis=1)]
    if flow is not None and len(flow) > 0:
        flow = np.asarray(flow, dtype=np.float32)
        ok = np.isfinite(flow).all(-1) if valid is None else np.asarray(valid, bool)
        speed = np.hypot(flow[..., 0], flow[..., 1])
        max_flow = float(speed[ok].max()) if ok.any() else 1.0
        key = _fit(color_wheel_key(min(ch, cw)), min(ch, cw), min(ch, cw))
        key_cell = blank.copy()
        y0, x0 = (ch - key.shape[0]) // 2, (cw - key.shape[1]) // 2
        key_cell[y0:y0 + key.shape[0], x0:x0 + key.shape[1]] = key
        bottom = [_label(key_cell, f"flow key, max {max_flow:.1f}px")]
        for i in shown:
            if i < len(flow):
                colour = flow_to_color(flow[i], max_flow=max_flow, valid=None if valid is None else valid[i])
                bottom.append(_label(_fit(colour, ch, cw), f"flow {i}->{i + 1}"))
            else:
                bottom.append(blank)
        rows.append(np.concatenate(bottom, axis=1))
    return np.concatenate(rows, axis=0)


def write_preview(
    frames: np.ndarray,
    inverse_depth: np.ndarray | None,
    flow: np.ndarray | None,
    out_dir: str | os.PathLike,
    name: str,
    valid: np.ndarray | None = None,
    fps: float = 8.0,
) -> tuple[Path, Path]:
    """Write `<out_dir>/<name>.gif` (the frames, looping) and `<out_dir>/<name>.png` (the contact sheet).

    Returns the two paths. `inverse_depth` and `flow` may be None (their cells stay empty).
    """
    frames = np.asarray(frames)
    sheet = contact_sheet(frames, inverse_depth, flow, valid)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gif_path, png_path = out_dir / f"{name}.gif", out_dir / f"{name}.png"
    images = [Image.fromarray(f) for f in frames]
    atomic_write(gif_path, lambda p: images[0].save(
        p, format="GIF", save_all=True, append_images=images[1:], duration=max(20, round(1000 / fps)), loop=0))
    atomic_write(png_path, lambda p: Image.fromarray(sheet).save(p, format="PNG"))
    return gif_path, png_path
