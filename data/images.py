"""Still-image loading: any common image file -> RGB uint8 HxWx3.

Grayscale, RGBA, CMYK, palette, 16-bit and EXIF-rotated JPEGs all come out the same way, so later stages
never see a mode they do not expect. Pillow does the decoding (it knows CMYK and EXIF); 16-bit data is
scaled, not clipped.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from data.errors import BadInputError

# 20000 x 20000 pixels is 1.2 GB as RGB: refuse such images rather than exhaust memory.
MAX_PIXELS = 100_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def load_rgb(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file and return it as RGB uint8 (H, W, 3), applying its EXIF orientation."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BadInputError(path, "image file does not exist")
    if os.path.getsize(path) == 0:
        raise BadInputError(path, "image file is empty (0 bytes)")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise BadInputError(path, f"image is {w}x{h}, larger than the limit of {max_pixels} pixels")
            if w < 2 or h < 2:
                raise BadInputError(path, f"image is only {w}x{h} pixels")
            im = ImageOps.exif_transpose(im)
            return _to_rgb_array(im, path)
    except BadInputError:
        raise
    except Image.DecompressionBombError as e:
        raise BadInputError(path, f"image is larger than the limit of {max_pixels} pixels ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadInputError(path, f"not a readable image ({type(e).__name__}: {e})") from None


def _to_rgb_array(im: Image.Image, path: str) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit / 32-bit single channel: scale the full range to 0..255.
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
        if mode == "F":
            top = max(float(a.max()), 1e-12)
        g = np.clip(np.rint(a / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        # Composite transparency over white, the usual viewer convention.
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba)
    arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise BadInputError(path, f"could not convert image mode {mode} to RGB")
    return np.ascontiguousarray(arr)
