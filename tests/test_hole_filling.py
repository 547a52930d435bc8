"""The push-pull hole filler (data/hole_filling.py, data.synthesis.fill_holes) and its choice in synthesis."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from data.hole_filling import fill_holes_batch
from data.synthesis import (
    camera_intrinsics,
    depth_from_inverse_depth,
    fill_holes,
    inpaint_holes,
    sample_camera_motion,
    synthesize_video,
    warp_forward,
)
from data.video import decode_video
from tests.conftest import require_realdata


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _random_case(seed: int, height: int = 23, width: int = 31, fraction: float = 0.2):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    hole = rng.random((height, width)) < fraction
    return image, hole


def _vertical_gradient(height: int, width: int) -> np.ndarray:
    return np.repeat(np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None], width, axis=1)


# --------------------------------------------------------------------------------------------- the contract


def test_fill_holes_returns_a_new_uint8_image_and_keeps_every_known_pixel_exactly():
    image, hole = _random_case(0)
    before = image.copy()
    filled = fill_holes(image, hole)
    assert filled.dtype == np.uint8 and filled.shape == image.shape
    assert (filled[~hole] == image[~hole]).all()
    assert (image == before).all()  # the input is not written to
    # The holes really are filled (random colours make a zero-valued result at every hole implausible).
    assert (filled[hole] != 0).any()


def test_no_hole_gives_the_image_back_and_all_hole_is_rejected():
    image, _ = _random_case(1)
    assert (fill_holes(image, np.zeros(image.shape[:2], bool)) == image).all()
    with pytest.raises(ValueError, match="all hole"):
        fill_holes(image, np.ones(image.shape[:2], bool))
    images = torch.from_numpy(np.stack([image, image]))
    holes = torch.zeros(images.shape[:3], dtype=torch.bool)
    holes[1] = True
    with pytest.raises(ValueError, match="image 1 of the batch is all hole"):
        fill_holes_batch(images, holes)


@pytest.mark.parametrize("image, hole, message", [
    (np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), bool), "RGB uint8"),
    (np.zeros((8, 8), np.uint8), np.zeros((8, 8), bool), "RGB uint8"),
    (np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8), bool), "RGB uint8"),
    (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9), bool), "shape"),
    (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8), "bool"),
    ([[0]], np.zeros((1, 1), bool), "numpy"),
])
def test_bad_inputs_are_rejected_with_a_clear_error(image, hole, message):
    with pytest.raises(ValueError, match=message):
        fill_holes(image, hole)


def test_batched_tensor_inputs_are_checked():
    images = torch.zeros((2, 8, 8, 3), dtype=torch.uint8)
    with pytest.raises(ValueError, match="holes must be bool"):
        fill_holes_batch(images, torch.zeros((2, 8, 7), dtype=torch.bool))
    with pytest.raises(ValueError, match="images must be RGB uint8"):
        fill_holes_batch(images.float(), torch.zeros((2, 8, 8), dtype=torch.bool))


# --------------------------------------------------------------------------------------------- what it computes


def test_a_constant_image_is_restored_exactly_whatever_the_holes():
    image = np.full((37, 50, 3), (200, 17, 90), np.uint8)
    hole = np.zeros((37, 50), bool)
    hole[:, :9] = True  # a border strip
    hole[10:25, 20:40] = True  # a wide hole
    hole[30, ::2] = True  # cracks
    assert (fill_holes(image, hole) == image).all()


def test_isolated_holes_in_a_linear_gradient_take_their_exact_value():
    # A crack takes the mean of its 8 known neighbours, which for a linear image is the true value.
    ys, xs = np.mgrid[0:40, 0:60]
    image = np.stack([2 * xs + 10, 3 * ys + 20, xs + ys + 30], axis=-1).astype(np.uint8)
    hole = np.zeros((40, 60), bool)
    hole[2:-2:3, 2:-2:3] = True
    assert (fill_holes(image, hole) == image).all()


def test_a_wide_hole_in_a_linear_gradient_stays_between_its_borders_and_close_to_the_truth():
    xs = np.arange(128)
    image = np.repeat(np.repeat((xs * 2)[None, :, None], 64, axis=0), 3, axis=2).astype(np.uint8)
    hole = np.zeros((64, 128), bool)
    hole[:, 60:72] = True  # 12 columns: values 120..142 are missing, 118 and 144 border them
    filled = fill_holes(image, hole).astype(int)
    assert filled[hole].min() >= 118 and filled[hole].max() <= 144
    assert np.abs(filled - image.astype(int))[hole].max() <= 8


def test_batched_fill_equals_one_image_at_a_time():
    cases = [_random_case(seed, 19, 26, fraction) for seed, fraction in ((2, 0.1), (3, 0.5), (4, 0.0))]
    images = torch.from_numpy(np.stack([c[0] for c in cases]))
    holes = torch.from_numpy(np.stack([c[1] for c in cases]))
    batched = fill_holes_batch(images, holes).numpy()
    for k, (image, hole) in enumerate(cases):
        assert (batched[k] == fill_holes(image, hole)).all(), k


def test_on_a_real_frame_with_our_warps_holes_it_is_not_worse_than_telea():
    """The bench's quality bound (within 0.5 dB of TELEA) on one real frame and one warp's hole mask."""
    frame = decode_video(require_realdata() / "videos" / "v_Shotput_g05_c02.avi")[0]
    height, width = frame.shape[:2]
    depth = torch.from_numpy(depth_from_inverse_depth(_vertical_gradient(height, width)))
    motion = sample_camera_motion(np.random.default_rng(5))
    hole = warp_forward(torch.from_numpy(frame), depth, camera_intrinsics(height, width), motion).hole.numpy()
    assert 0.01 < hole.mean() < 0.3
    cut = np.where(hole[..., None], 0, frame).astype(np.uint8)

    def psnr(filled):
        error = filled.astype(float)[hole] - frame.astype(float)[hole]
        return 10 * np.log10(255.0 ** 2 / np.mean(error ** 2))

    assert psnr(fill_holes(cut, hole)) > psnr(inpaint_holes(cut, hole)) - 0.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fill_matches_cpu():
    cases = [_random_case(seed, 64, 90, fraction) for seed, fraction in ((5, 0.08), (6, 0.4))]
    images = torch.from_numpy(np.stack([c[0] for c in cases]))
    holes = torch.from_numpy(np.stack([c[1] for c in cases]))
    cpu = fill_holes_batch(images, holes)
    gpu = fill_holes_batch(images.cuda(), holes.cuda()).cpu()
    assert (gpu[~holes] == images[~holes]).all()
    # float32 sums in another order may round a value on the .5 boundary the other way
    assert (gpu.int() - cpu.int()).abs().max() <= 1 and (gpu == cpu).float().mean() > 0.99


# --------------------------------------------------------------------------------------------- in synthesis


def test_synthesis_uses_the_chosen_filler_on_the_warped_frame():
    rng = np.random.default_rng(9)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    inverse = _vertical_gradient(30, 40)
    motion = sample_camera_motion(np.random.default_rng(1))
    warped = warp_forward(torch.from_numpy(image), torch.from_numpy(depth_from_inverse_depth(inverse)),
                          camera_intrinsics(30, 40), motion)
    image_w, hole = warped.image.numpy(), warped.hole.numpy()
    assert hole.any()
    fast = synthesize_video(image, inverse, num_frames=1, motions=[motion])
    telea = synthesize_video(image, inverse, num_frames=1, motions=[motion], hole_filler="telea")
    assert (fast.frames[0] == fill_holes(image_w, hole)).all()
    assert (telea.frames[0] == inpaint_holes(image_w, hole)).all()
    assert not np.array_equal(fast.frames[0], telea.frames[0])
    assert (fast.holes == telea.holes).all()  # the geometry does not depend on the filler
    with pytest.raises(ValueError, match="unknown hole_filler 'nearest'"):
        synthesize_video(image, inverse, num_frames=1, hole_filler="nearest")


def test_the_stage_records_its_filler_and_the_filler_changes_the_output_key(tmp_path):
    from data.store import StoreReader
    from pipeline import SynthesizeSourceVideos
    from tests.pipeline_helpers import build, reset_config, tiny_syn_config, use_config

    workdir = tmp_path / "work"
    try:
        use_config(tmp_path / "luigi.cfg", tiny_syn_config(workdir, source_shards=1, target_shards=1,
                                                           hole_filler="telea"))
        task = SynthesizeSourceVideos(benchmark="SYN", shard=0)
        telea_key = task.output_key()
        assert build([task])
        reader = StoreReader(task.shard_file())
        assert reader.params["hole_filler"] == "telea"
        assert reader.ids and all(reader.item_attrs(i)["hole_filler"] == "telea" for i in reader.ids)

        use_config(tmp_path / "luigi.cfg", tiny_syn_config(workdir, source_shards=1, target_shards=1))
        assert SynthesizeSourceVideos(benchmark="SYN", shard=0).hole_filler == "pushpull"  # repository default
        assert SynthesizeSourceVideos(benchmark="SYN", shard=0).output_key() != telea_key

        use_config(tmp_path / "luigi.cfg", tiny_syn_config(workdir, source_shards=1, target_shards=1,
                                                           hole_filler="nearest"))
        with pytest.raises(ValueError, match=r"unknown hole_filler 'nearest'.*\[benchmark.SYN\] of luigi.cfg"):
            SynthesizeSourceVideos(benchmark="SYN", shard=0).hole_filler
    finally:
        reset_config()
