"""Video decoding for .avi/.mp4 (and anything FFmpeg reads): frames counted by decoding, never trusted
from the container, resized so the short side has a configured length."""
from __future__ import annotations

import os

import cv2
import numpy as np

from data.errors import BadInputError

# A guard against a corrupt header that makes a decoder produce frames forever.
MAX_FRAMES = 100_000


def resize_short_side(frame: np.ndarray, short_side: int | None) -> np.ndarray:
    """Resize so that min(H, W) == short_side, keeping the aspect ratio (area filter when shrinking)."""
    if not short_side:
        return frame
    h, w = frame.shape[:2]
    if min(h, w) == short_side:
        return frame
    scale = short_side / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(frame, size, interpolation=interp)


def iter_frames(path: str | os.PathLike, short_side: int | None = None):
    """Yield RGB uint8 frames one by one. Raises BadInputError if the file cannot be opened."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BadInputError(path, "video file does not exist")
    if os.path.getsize(path) == 0:
        raise BadInputError(path, "video file is empty (0 bytes)")
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise BadInputError(path, "not a readable video (the decoder could not open it)")
        shape = None
        for _ in range(MAX_FRAMES):
            ok, bgr = cap.read()
            if not ok or bgr is None:
                return
            if bgr.ndim == 2:
                bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
            if shape is not None and bgr.shape != shape:
                raise BadInputError(path, f"frame size changed mid-stream from {shape} to {bgr.shape}")
            shape = bgr.shape
            yield resize_short_side(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), short_side)
        raise BadInputError(path, f"more than {MAX_FRAMES} frames: refusing (corrupt header?)")
    finally:
        cap.release()


def decode_video(path: str | os.PathLike, short_side: int | None = None, min_frames: int = 2) -> np.ndarray:
    """Decode every frame of a video into RGB uint8 (T, H, W, 3).

    The frame count is what the decoder actually delivers. A video with fewer than `min_frames` frames
    (zero-frame, one-frame, truncated before the first frame) is a BadInputError: optical flow needs at
    least two frames.
    """
    frames = list(iter_frames(path, short_side))
    if len(frames) < min_frames:
        raise BadInputError(path, f"video has {len(frames)} decodable frame(s); at least {min_frames} are needed")
    return np.stack(frames)
