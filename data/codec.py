"""Per-frame encodings used by the HDF5 store.

RGB frames are JPEG; flows are quantised to uint8 with the community convention round((v + 20) * 255 / 40)
and the u and v planes stacked into one grayscale image, then JPEG- or PNG-compressed. The choice and its
measured cost per frame are in docs/storage.md; `tests/bench/bench_store.py` reproduces the figures.
"""
from __future__ import annotations

import cv2
import numpy as np

from data.flow import dequantize_flow, quantize_flow  # the one definition of the convention

# name -> (image format, OpenCV parameters). The store records the name in every file.
FRAME_ENCODINGS = {
    "jpeg90": (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 90]),
    "jpeg95": (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]),
    "png": (".png", [cv2.IMWRITE_PNG_COMPRESSION, 1]),
}
FLOW_ENCODINGS = {
    "jpeg90": (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 90]),
    "jpeg95": (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]),
    "jpeg98": (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 98]),
    "png": (".png", [cv2.IMWRITE_PNG_COMPRESSION, 1]),
}
DEFAULT_FRAME_ENCODING = "jpeg90"
DEFAULT_FLOW_ENCODING = "jpeg95"


def _encode(img: np.ndarray, encoding: str, table: dict) -> bytes:
    ext, params = table[encoding]
    ok, buf = cv2.imencode(ext, img, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode an image of shape {img.shape} as {encoding}")
    return buf.tobytes()


def encode_frame(rgb: np.ndarray, encoding: str = DEFAULT_FRAME_ENCODING) -> bytes:
    """RGB uint8 (H, W, 3) -> compressed bytes."""
    return _encode(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR), encoding, FRAME_ENCODINGS)


def decode_frame(buf) -> np.ndarray:
    """Compressed bytes -> RGB uint8 (H, W, 3)."""
    bgr = cv2.imdecode(np.frombuffer(buf, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("corrupt frame bytes in the store")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode_flow(flow: np.ndarray, encoding: str = DEFAULT_FLOW_ENCODING) -> bytes:
    """float32 flow (H, W, 2) -> bytes: quantised u above v in one (2H, W) grayscale image."""
    q = quantize_flow(flow)
    return _encode(np.concatenate([q[..., 0], q[..., 1]], axis=0), encoding, FLOW_ENCODINGS)


def decode_flow(buf) -> np.ndarray:
    """bytes -> float32 flow (H, W, 2)."""
    g = cv2.imdecode(np.frombuffer(buf, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    if g is None or g.shape[0] % 2:
        raise ValueError("corrupt flow bytes in the store")
    h = g.shape[0] // 2
    return dequantize_flow(np.stack([g[:h], g[h:]], axis=-1))
