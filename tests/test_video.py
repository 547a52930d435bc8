from pathlib import Path

import cv2
import numpy as np
import pytest

from data.errors import BadInputError
from data.video import decode_video, resize_short_side
from tests.conftest import manifest_frame_counts


def test_every_real_clip_decodes_to_the_manifest_frame_count(realdata):
    counts = manifest_frame_counts(realdata)
    assert len(counts) == 13
    for name, expected in counts.items():
        frames = decode_video(realdata / "videos" / name)
        assert frames.shape[0] == expected, name
        assert frames.dtype == np.uint8 and frames.shape[3] == 3


def test_decode_resizes_to_the_short_side_keeping_aspect(realdata):
    frames = decode_video(realdata / "videos" / "Documentario_Le_Parkour_Londrina_jump_f_cm_np1_ri_bad_6.mp4", 128)
    assert frames.shape[1:] == (128, 226, 3)  # 452x256 -> 226x128


def _write_video(path: Path, n: int, size=(32, 24)) -> None:
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    for i in range(n):
        vw.write(np.full((size[1], size[0], 3), i * 10 % 255, np.uint8))
    vw.release()


@pytest.mark.parametrize("n", [0, 1])
def test_zero_and_one_frame_videos_are_rejected_with_the_file_name(tmp_path, n):
    path = tmp_path / f"clip {n} frames!.avi"
    _write_video(path, n)
    with pytest.raises(BadInputError, match=r"clip \d frames!\.avi"):
        decode_video(path)


def test_empty_and_garbage_and_truncated_videos_give_clear_errors(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(BadInputError, match="empty"):
        decode_video(empty)
    garbage = tmp_path / "garbage.avi"
    garbage.write_bytes(b"not a video at all" * 100)
    with pytest.raises(BadInputError, match="garbage.avi"):
        decode_video(garbage)
    good = tmp_path / "good.avi"
    _write_video(good, 20)
    truncated = tmp_path / "truncated.avi"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(BadInputError, match="truncated.avi"):
        decode_video(truncated)


def test_unicode_name_decodes(tmp_path):
    path = tmp_path / "vidéo ünï.avi"
    _write_video(path, 5)
    assert decode_video(path).shape[0] == 5


def test_resize_short_side_is_identity_when_already_right():
    a = np.zeros((64, 80, 3), np.uint8)
    assert resize_short_side(a, 64) is a
    assert resize_short_side(a, 32).shape == (32, 40, 3)
