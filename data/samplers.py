"""Frame-index samplers. All indices are 0-based int64 (the released code's int8 linspace overflowed for
videos of 128 frames or more)."""
from __future__ import annotations

import numpy as np


def uniform_indices(num_frames: int, n: int) -> np.ndarray:
    """n indices spread uniformly over the whole video (inference: 32 frames, the paper's evaluation).

    Segment starts of n equal segments, as np.linspace(0, num_frames, n, endpoint=False); shorter videos
    repeat frames.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return np.floor(np.arange(n, dtype=np.float64) * (num_frames / n)).astype(np.int64)


def pace_indices(num_frames: int, start: int, pace: int, n: int = 16) -> np.ndarray:
    """The looping pace sampler of video pace prediction (Eq. 5): start at `start`, step `pace`, and when
    the next index would pass the end, loop back to the first frame with the step count restarted.

    Paper example (1-based): 30 frames, start 20, pace 2 -> 20 22 24 26 28 30 2 4 ... 20. In 0-based
    indices the loop restarts at frame index pace - 1 (1-based frame `pace`), which is exactly that example.
    """
    if num_frames < 1 or pace < 1 or not 0 <= start < num_frames:
        raise ValueError(f"bad pace sampling: num_frames={num_frames} start={start} pace={pace}")
    out = np.empty(n, dtype=np.int64)
    idx = start
    for i in range(n):
        out[i] = idx
        idx += pace
        if idx >= num_frames:
            # Restart from the beginning, counting the step from a virtual frame before the first one.
            idx = min(pace - 1, num_frames - 1)
    return out


def training_clip_indices(num_frames: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n consecutive frames from a random start (looping when the video is shorter than n)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    start = int(rng.integers(0, max(1, num_frames - n + 1)))
    return (start + np.arange(n, dtype=np.int64)) % num_frames
