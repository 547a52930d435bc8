"""Source-video synthesis (data/synthesis.py) and its previews (data/preview.py)."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from data.preview import color_wheel_key, flow_to_color, write_preview
from data.synthesis import (
    MAX_DEPTH,
    camera_intrinsics,
    axis_angle_to_matrix,
    depth_from_inverse_depth,
    fill_depth_holes,
    item_seed,
    motion_matrix,
    sample_camera_motion,
    synthesize_video,
    warp_forward,
    warp_forward_loop,
)

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The images here are small: one thread is fastest, and the machine's cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _realdata(relative: str) -> Path:
    path = REALDATA / relative
    if not path.exists():
        message = f"real test data missing: {path}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _first_frame(path: Path) -> np.ndarray:
    capture = cv2.VideoCapture(str(path))
    ok, bgr = capture.read()
    capture.release()
    assert ok, f"could not decode {path}"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random colour texture: varied enough to catch a wrong pixel, smooth enough for bilinear lookups."""
    noise = np.random.default_rng(seed).random((height, width, 3)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 2.0)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (smooth * 255).astype(np.uint8)


def _vertical_gradient(height: int, width: int) -> np.ndarray:
    """Crude inverse depth: the top of the image far, the bottom near."""
    return np.repeat(np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None], width, axis=1)


def _translation(tx=0.0, ty=0.0, tz=0.0) -> np.ndarray:
    return motion_matrix(np.zeros(3), (tx, ty, tz))


def _warp(image, depth, motion):
    height, width = depth.shape
    result = warp_forward(torch.from_numpy(image), torch.from_numpy(depth.astype(np.float32)),
                          camera_intrinsics(height, width), motion)
    return type(result)(*(x.numpy() for x in result))


# --------------------------------------------------------------------------------------------- depth, camera


def test_depth_is_one_over_normalised_inverse_depth_plus_offset_capped_at_100():
    inverse = np.array([[2.0, 6.0], [4.0, 3.0]], dtype=np.float32)  # normalises to 0, 1, 0.5, 0.25
    expected = np.minimum(1.0 / (np.array([[0.0, 1.0], [0.5, 0.25]]) + 0.005), 100.0)
    np.testing.assert_allclose(depth_from_inverse_depth(inverse), expected, rtol=1e-6)
    assert depth_from_inverse_depth(inverse)[0, 0] == MAX_DEPTH
    # Scale and shift of the inverse depth do not matter (MiDaS output is only relative).
    np.testing.assert_allclose(depth_from_inverse_depth(inverse * 7 + 3), expected, rtol=1e-5)
    torch.testing.assert_close(depth_from_inverse_depth(torch.from_numpy(inverse)),
                               torch.from_numpy(expected.astype(np.float32)))
    assert (depth_from_inverse_depth(np.ones((3, 3))) == MAX_DEPTH).all()


def test_intrinsics_are_depthstillations():
    K = camera_intrinsics(240, 320)
    np.testing.assert_allclose(K, [[0.58 * 320, 0, 160], [0, 0.58 * 240, 120], [0, 0, 1]])


def test_axis_angle_rotation_matches_opencv_rodrigues():
    vector = np.array([0.03, -0.02, 0.025])
    np.testing.assert_allclose(axis_angle_to_matrix(vector), cv2.Rodrigues(vector)[0], atol=1e-12)


def test_sampled_motion_magnitudes_lie_in_the_papers_ranges_with_both_signs():
    rng = np.random.default_rng(123)
    rotations, translations = [], []
    for _ in range(300):
        T = sample_camera_motion(rng)
        np.testing.assert_allclose(T[3], [0, 0, 0, 1])
        np.testing.assert_allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-12)
        rotations.append(cv2.Rodrigues(T[:3, :3])[0].ravel())
        translations.append(T[:3, 3])
    rotations_deg = np.rad2deg(np.abs(rotations))
    translations = np.abs(translations)
    assert rotations_deg.min() >= 1.0 - 1e-9 and rotations_deg.max() < 2.0 + 1e-9
    assert translations.min() >= 0.01 and translations.max() < 0.02
    assert (np.sign(rotations) > 0).mean(axis=0).min() > 0.3 and (np.sign(rotations) < 0).mean(axis=0).min() > 0.3


def test_item_seed_is_stable_and_differs_between_items_and_runs():
    assert item_seed("a/b.jpg", 0) == item_seed("a/b.jpg", 0)
    assert len({item_seed("a/b.jpg", 0), item_seed("a/c.jpg", 0), item_seed("a/b.jpg", 1)}) == 3
    assert 0 <= item_seed("x", 5) < 2**63


# --------------------------------------------------------------------------------------------- the warp


def test_zero_motion_reproduces_the_image_exactly():
    image = _texture(24, 32)
    result = synthesize_video(image, _vertical_gradient(24, 32), num_frames=3, zero_motion=True, return_flow=True)
    assert result.frames.shape == (3, 24, 32, 3) and result.frames.dtype == np.uint8
    assert (result.frames == image).all()
    assert not result.holes.any() and result.valid.all()
    assert np.abs(result.flow).max() < 1e-4


def test_pure_translation_shifts_by_tx_fx_over_z():
    height, width = 20, 64
    image = _texture(height, width)
    fx = camera_intrinsics(height, width)[0, 0]
    # A constant inverse depth gives depth 100 everywhere; choose tx for an exact 3 pixel shift to the right.
    tx = 3 * MAX_DEPTH / fx
    result = synthesize_video(image, np.ones((height, width)), num_frames=1, motions=[_translation(tx=tx)])
    assert (result.frames[0][:, 3:] == image[:, :-3]).all()
    assert result.holes[0][:, :3].all() and not result.holes[0][:, 3:].any()

    # Non-integer shifts show in the flow; vertical translation moves rows by ty * fy / Z.
    depth = np.full((height, width), 2.0, dtype=np.float32)
    fy = camera_intrinsics(height, width)[1, 1]
    warped = _warp(image, depth, _translation(tx=0.05, ty=-0.03))
    np.testing.assert_allclose(warped.flow[..., 0], 0.05 * fx / 2.0, rtol=1e-5)
    np.testing.assert_allclose(warped.flow[..., 1], -0.03 * fy / 2.0, rtol=1e-5)


def test_points_leaving_the_frame_are_dropped_not_clamped_onto_the_border():
    height, width = 8, 16
    image = _texture(height, width)
    fx = camera_intrinsics(height, width)[0, 0]
    warped = _warp(image, np.full((height, width), 1.0), _translation(tx=3 / fx))
    assert (warped.image[:, -1] == image[:, -4]).all()  # not the last column of the source
    assert not warped.valid[:, -3:].any() and warped.valid[:, :-3].all()
    assert warped.hole[:, :3].all()


@pytest.mark.parametrize("direction", [+1, -1])
def test_z_buffer_keeps_the_nearest_of_two_points_landing_on_one_pixel(direction):
    # Everything far (depth 100 barely moves); one near pixel moves 2 pixels onto a far pixel's spot.
    # direction +1: the near point comes first in raster order; -1: it comes after the far one.
    height, width = 4, 16
    image = np.arange(height * width * 3, dtype=np.uint8).reshape(height, width, 3)
    depth = np.full((height, width), 100.0, dtype=np.float32)
    near_x, landing_x = 8 - 2 * direction, 8
    depth[1, near_x] = 1.0
    fx = camera_intrinsics(height, width)[0, 0]
    warped = _warp(image, depth, _translation(tx=direction * 2.0 / fx))
    assert (warped.image[1, landing_x] == image[1, near_x]).all()
    assert warped.depth[1, landing_x] == pytest.approx(1.0)
    assert warped.valid[1, near_x] and not warped.valid[1, landing_x]  # the far point is hidden
    assert warped.hole[1, near_x]
    np.testing.assert_allclose(warped.flow[1, near_x], [2.0 * direction, 0.0], atol=1e-4)


def test_loop_baseline_equals_vectorised_warp_on_a_tiny_image():
    rng = np.random.default_rng(7)
    height, width = 12, 16
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    depth = rng.uniform(1.0, 10.0, (height, width)).astype(np.float32)
    K = camera_intrinsics(height, width)
    for _ in range(5):  # large motions, so that collisions, holes and points off the frame all occur
        motion = motion_matrix(rng.normal(0, 0.1, 3), rng.normal(0, 0.3, 3))
        fast = _warp(image, depth, motion)
        slow = warp_forward_loop(image, depth, K, motion)
        assert slow.hole.any() and (~slow.valid & ~slow.hole).any()
        for name in ("image", "hole", "valid"):
            assert (getattr(fast, name) == getattr(slow, name)).all(), name
        np.testing.assert_allclose(fast.depth, slow.depth, rtol=1e-5)
        np.testing.assert_allclose(fast.flow, slow.flow, atol=1e-4)


# --------------------------------------------------------------------------------------------- the video


def test_ground_truth_flow_maps_frame_k_onto_frame_k_plus_1():
    height, width = 60, 80
    image = _texture(height, width, seed=3)
    result = synthesize_video(image, _vertical_gradient(height, width), num_frames=5, seed=11, return_flow=True)
    assert result.flow.shape == (4, height, width, 2) and result.flow.dtype == np.float32
    assert result.valid.shape == (4, height, width) and result.valid.dtype == bool
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    for k in range(4):
        valid = result.valid[k]
        assert valid.mean() > 0.7
        map_x, map_y = xs + result.flow[k, ..., 0], ys + result.flow[k, ..., 1]
        # Nearest lookup: every valid pixel of frame k is exactly where the flow says in frame k+1.
        tx = np.floor(map_x[valid] + 0.5).astype(int)
        ty = np.floor(map_y[valid] + 0.5).astype(int)
        assert not result.holes[k + 1][ty, tx].any()
        assert (result.frames[k + 1][ty, tx] == result.frames[k][valid]).all()
        # Bilinear backward warp of frame k+1 with the flow reproduces frame k closely.
        back = cv2.remap(result.frames[k + 1], map_x, map_y, cv2.INTER_LINEAR)
        error = np.abs(back.astype(np.float32) - result.frames[k].astype(np.float32))[valid]
        assert error.mean() < 6.0, error.mean()


def test_same_seed_gives_identical_videos_and_another_seed_a_different_one():
    image, inverse = _texture(30, 40), _vertical_gradient(30, 40)
    a = synthesize_video(image, inverse, num_frames=4, seed=5, return_flow=True)
    b = synthesize_video(image, inverse, num_frames=4, seed=5, return_flow=True)
    c = synthesize_video(image, inverse, num_frames=4, seed=6, return_flow=True)
    assert a.frames.tobytes() == b.frames.tobytes() and a.flow.tobytes() == b.flow.tobytes()
    assert (a.valid == b.valid).all()
    assert not np.array_equal(a.frames, c.frames)
    assert len(a.motions) == 4 and not np.allclose(a.motions[0], c.motions[0])


def test_include_still_makes_frame_0_the_still_and_flow_count_is_frames_minus_one():
    image, inverse = _texture(30, 40), _vertical_gradient(30, 40)
    with_still = synthesize_video(image, inverse, num_frames=4, seed=1, include_still=True, return_flow=True)
    without = synthesize_video(image, inverse, num_frames=4, seed=1, return_flow=True)
    assert (with_still.frames[0] == image).all() and len(with_still.motions) == 3
    assert not np.array_equal(without.frames[0], image) and len(without.motions) == 4
    assert len(with_still.flow) == len(without.flow) == 3
    # The still itself has no holes; its flow to frame 1 is the first warp's.
    assert not with_still.holes[0].any()
    assert synthesize_video(image, inverse, num_frames=4).flow is None


def test_explicit_motions_must_match_the_number_of_warps():
    image, inverse = _texture(10, 12), _vertical_gradient(10, 12)
    with pytest.raises(ValueError, match="motions"):
        synthesize_video(image, inverse, num_frames=3, motions=[np.eye(4)] * 2)
    with pytest.raises(ValueError, match="inverse depth"):
        synthesize_video(image, inverse[:5], num_frames=3)


def test_redepth_fn_reestimates_depth_on_every_generated_frame():
    image, inverse = _texture(30, 40), _vertical_gradient(30, 40)
    seen = []

    def redepth(frame):
        seen.append(frame.copy())
        return inverse

    result = synthesize_video(image, inverse, num_frames=4, seed=2, redepth_fn=redepth)
    assert len(seen) == 3  # the still's depth is given; frames 0..2 are re-estimated to make frames 1..3
    for given, frame in zip(seen, result.frames[:3]):
        assert (given == frame).all()


def test_chained_depth_keeps_holes_from_growing_along_the_video():
    height, width = 96, 128
    image, inverse = _texture(height, width), _vertical_gradient(height, width)
    result = synthesize_video(image, inverse, num_frames=16, seed=0)
    fraction = result.holes.mean(axis=(1, 2))
    assert fraction[-4:].mean() < 1.5 * fraction[:4].mean() + 0.02, fraction


def test_depth_fill_stays_within_the_seen_inverse_depth_range():
    depth = 1.0 / np.linspace(0.01, 1.0, 40 * 50, dtype=np.float32).reshape(40, 50)
    hole = np.zeros(depth.shape, bool)
    hole[::3, :] = True  # cracks
    hole[10:20, 10:25] = True  # a wide hole
    filled = fill_depth_holes(np.where(hole, 0, depth).astype(np.float32), hole)
    assert np.isfinite(filled).all()
    assert filled.min() >= depth[~hole].min() - 1e-4 and filled.max() <= depth[~hole].max() + 1e-3
    assert (filled[~hole] == depth[~hole]).all()


def test_synthesis_runs_on_a_real_ucf101_frame():
    image = _first_frame(_realdata("videos/v_Shotput_g05_c02.avi"))
    assert image.shape == (240, 320, 3)
    result = synthesize_video(image, _vertical_gradient(240, 320), num_frames=4, seed=0, return_flow=True)
    assert result.frames.shape == (4, 240, 320, 3) and result.flow.shape == (3, 240, 320, 2)
    assert result.holes.mean() < 0.2 and result.valid.mean() > 0.8
    # The view moved but still shows the same scene.
    difference = np.abs(result.frames[0].astype(int) - image.astype(int)).mean()
    assert 1.0 < difference < 60.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_is_deterministic():
    image, inverse = _texture(60, 80), _vertical_gradient(60, 80)
    cpu = synthesize_video(image, inverse, num_frames=4, seed=3, return_flow=True)
    gpu = synthesize_video(image, inverse, num_frames=4, seed=3, return_flow=True, device="cuda")
    again = synthesize_video(image, inverse, num_frames=4, seed=3, return_flow=True, device="cuda")
    assert gpu.frames.tobytes() == again.frames.tobytes()
    assert (gpu.frames == cpu.frames).mean() > 0.99
    assert (gpu.valid == cpu.valid).mean() > 0.99


# --------------------------------------------------------------------------------------------- previews


def test_flow_colours_follow_the_middlebury_wheel():
    flow = np.array([[[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [np.nan, 0.0]]], dtype=np.float32)
    colours = flow_to_color(flow, max_flow=1.0).astype(int)
    assert (colours[0, 0] == 255).all()  # no motion: white
    right, left = colours[0, 1], colours[0, 2]
    assert right[0] == 255 and right[1] < 50  # rightward: red
    assert left[0] == 0 and left[1] > 150 and left[2] == 255  # leftward: cyan-blue
    assert (colours[0, 3] == 0).all()  # invalid: black
    key = color_wheel_key(33)
    assert key.shape == (33, 33, 3) and (key[16, 16] == 255).all() and (key[0, 0] == 0).all()


def test_preview_files_are_written_and_readable(tmp_path):
    image, inverse = _texture(30, 40), _vertical_gradient(30, 40)
    result = synthesize_video(image, inverse, num_frames=5, seed=0, return_flow=True)
    gif, png = write_preview(result.frames, inverse, result.flow, tmp_path / "out", "clip", valid=result.valid)
    assert gif == tmp_path / "out" / "clip.gif" and png == tmp_path / "out" / "clip.png"
    with Image.open(gif) as animation:
        assert animation.n_frames == 5 and animation.size == (40, 30)
    sheet = np.asarray(Image.open(png))
    assert sheet.shape[0] == 60 and sheet.shape[1] % 40 == 0 and sheet.shape[2] == 3
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporary files left
