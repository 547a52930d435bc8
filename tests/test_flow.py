"""TV-L1 flow (data/flow.py) on real third-party data (../shared/realdata).

To stay fast, FlyingChairs pairs (512x384) are downscaled by 2 (images INTER_AREA, ground truth resized
INTER_AREA and halved) and run with OpenCV's defaults except a looser stopping tolerance (EPS_05:
epsilon 0.05 instead of 0.01), which is ~8x cheaper and moves the EPE by <0.1 px on these pairs
(default-parameter figures at full resolution: tests/bench/bench_flow.py --gt). The video clips run at short
side 64 with QUICK parameters (1 scale, 1 warp, 3 iterations), where only the flow count is the point.
"""
from __future__ import annotations

import functools
import json
import multiprocessing
import os
import re
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from data import flow as F
from data.errors import BadInputError
from data.video import decode_video
from tests.conftest import REALDATA, manifest_frame_counts, require
PAIRS = REALDATA / "flow_pairs"
VIDEOS = REALDATA / "videos"
FORMAT_SAMPLE = REALDATA / "tvl1_format_sample"
SMALL_MOTION = ["0000000", "0000001", "0000002", "0000003"]  # MANIFEST: pairs 4 and 5 move 25-31 px
QUICK = dict(nscales=1, warps=1, outer_iterations=1, inner_iterations=3, median_filtering=1)
EPS_05 = dict(epsilon=0.05)
STEP = 40.0 / 255.0  # one quantisation level in px


def _rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, path
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _half(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    return cv2.resize(img, (w // 2, h // 2), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def half_pairs():
    """id -> (img0, img1, gt) at half resolution (256x192); gt in half-resolution pixels."""
    require(PAIRS)
    out = {}
    for pid in SMALL_MOTION:
        gt = F.read_flo(PAIRS / f"{pid}-gt.flo")
        out[pid] = (_half(_rgb(PAIRS / f"{pid}-img0.ppm")), _half(_rgb(PAIRS / f"{pid}-img1.ppm")), _half(gt) * 0.5)
    return out


@pytest.fixture(scope="module")
def half_flows(half_pairs):
    """Our flow (defaults but epsilon 0.05) for every small-motion pair (the expensive part)."""
    return {pid: F.tvl1_flow(a, b, **EPS_05) for pid, (a, b, _) in half_pairs.items()}


@pytest.fixture(scope="module")
def sample_frames():
    require(FORMAT_SAMPLE)
    return np.stack([_rgb(FORMAT_SAMPLE / f"img_{i:05d}.jpg") for i in range(1, 7)])


# ------------------------------------------------------------------------------------------ parameters
def test_defaults_are_opencvs_defaults():
    assert F.tvl1_object_params(cv2.optflow.DualTVL1OpticalFlow_create()) == pytest.approx(F.TVL1_DEFAULTS)


def test_every_parameter_reaches_the_opencv_object():
    custom = dict(tau=0.2, lambda_=0.1, theta=0.4, nscales=3, warps=2, epsilon=0.02, inner_iterations=7,
                  outer_iterations=4, scale_step=0.6, gamma=0.1, median_filtering=3)
    assert set(custom) == set(F.TVL1_DEFAULTS)
    assert F.tvl1_object_params(F.make_tvl1(**custom)) == pytest.approx(custom)


def test_unknown_or_bad_parameters_are_rejected():
    with pytest.raises(TypeError, match="innerIterations"):
        F.make_tvl1(innerIterations=3)
    with pytest.raises(ValueError, match="integer"):
        F.resolve_tvl1_params({"warps": 2.5})
    with pytest.raises(ValueError, match="scale_step"):
        F.resolve_tvl1_params({"scale_step": 1.0})


def test_params_record_is_complete_and_storable():
    rec = F.flow_params_record({"warps": 3}, "opencv")
    assert rec["warps"] == 3 and rec["backend"] == "opencv" and rec["opencv_version"] == cv2.__version__
    assert set(F.TVL1_DEFAULTS) <= set(rec) and rec["flow_bound"] == F.FLOW_BOUND
    assert all(isinstance(v, (str, int, float)) for v in rec.values())
    json.dumps(rec)
    with pytest.raises(ValueError, match="backend"):
        F.flow_params_record(None, "cuda")


# --------------------------------------------------------------------------------------- flow vs OpenCV
def test_flow_equals_calling_opencv_directly(half_pairs, half_flows):
    a, b, _ = half_pairs["0000000"]
    direct = cv2.optflow.DualTVL1OpticalFlow_create(epsilon=0.05).calc(
        cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.cvtColor(b, cv2.COLOR_RGB2GRAY), None)
    ours = half_flows["0000000"]
    assert ours.dtype == np.float32 and ours.shape == a.shape[:2] + (2,)
    np.testing.assert_allclose(ours, np.clip(direct, -20, 20), rtol=0, atol=1e-6)


def test_gray_input_gives_the_same_flow_as_rgb(half_pairs):
    a, b, _ = half_pairs["0000001"]
    ga, gb = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)
    np.testing.assert_array_equal(F.tvl1_flow(a, b, **QUICK), F.tvl1_flow(ga, gb[:, :, None], **QUICK))


def test_bad_frames_are_rejected():
    with pytest.raises(TypeError, match="uint8"):
        F.tvl1_flow(np.zeros((8, 8), np.float32), np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="differ in size"):
        F.tvl1_flow(np.zeros((8, 8), np.uint8), np.zeros((8, 9), np.uint8))
    with pytest.raises(ValueError, match="backend"):
        F.tvl1_flow(np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8), backend="gpu")


def test_reused_object_gives_bitwise_the_same_flows_as_fresh_ones(half_pairs):
    """video_flows reuses one OpenCV object and converts colours once; the naive way creates both per pair."""
    clip = np.stack([half_pairs[p][0] for p in SMALL_MOTION[:3]] + [half_pairs["0000002"][1]])
    naive = np.stack([np.clip(F.make_tvl1(**QUICK).calc(cv2.cvtColor(clip[i], cv2.COLOR_RGB2GRAY),
                                                        cv2.cvtColor(clip[i + 1], cv2.COLOR_RGB2GRAY), None),
                              -20, 20) for i in range(len(clip) - 1)])
    np.testing.assert_array_equal(F.video_flows(clip, QUICK), naive)
    np.testing.assert_array_equal(F.video_flows(clip, tvl1=F.make_tvl1(**QUICK)), naive)


# ------------------------------------------------------------------------------------ accuracy, storage
def test_quantised_flow_stays_within_a_tenth_of_a_pixel(half_flows):
    for pid, fl in half_flows.items():
        q = F.quantize_flow(fl)
        assert q.dtype == np.uint8
        assert F.endpoint_error(F.dequantize_flow(q), fl) <= 0.1, pid


def test_endpoint_error_against_ground_truth_is_reasonable(half_pairs, half_flows, record_property):
    """Half resolution, EPS_05 parameters. Figures are printed (pytest -s) and recorded as properties."""
    for pid, (_, _, gt) in half_pairs.items():
        epe = F.endpoint_error(half_flows[pid], gt)  # gt unclipped: ~4% of its pixels exceed 20 px
        record_property(f"epe_half_res_{pid}", round(epe, 3))
        print(f"FlyingChairs {pid} half resolution: mean EPE {epe:.3f} px (mean |gt| "
              f"{np.linalg.norm(gt, axis=-1).mean():.2f} px)")
        assert np.isfinite(epe) and epe < 6.0, (pid, epe)
        assert epe < F.endpoint_error(np.zeros_like(gt), gt), pid  # better than claiming no motion


def test_quantisation_convention():
    v = np.array([-25.0, -20.0, 0.0, 20.0, 30.0, 40 / 255 - 20], np.float32)
    np.testing.assert_array_equal(F.quantize_flow(v), [0, 0, 128, 255, 255, 1])
    grid = np.linspace(-20, 20, 4001, dtype=np.float32)
    assert np.abs(F.dequantize_flow(F.quantize_flow(grid)) - grid).max() <= STEP / 2 + 1e-5
    with pytest.raises(ValueError, match="NaN"):
        F.quantize_flow(np.array([np.nan], np.float32))


def test_read_flo_reads_ground_truth_and_rejects_bad_files(tmp_path):
    require(PAIRS)
    gt = F.read_flo(PAIRS / "0000000-gt.flo")
    assert gt.shape == (384, 512, 2) and gt.dtype == np.float32 and np.isfinite(gt).all()
    raw = (PAIRS / "0000000-gt.flo").read_bytes()
    (tmp_path / "magic.flo").write_bytes(b"XXXX" + raw[4:])
    with pytest.raises(BadInputError, match="magic.flo.*magic"):
        F.read_flo(tmp_path / "magic.flo")
    (tmp_path / "short.flo").write_bytes(raw[:-8])
    with pytest.raises(BadInputError, match="short.flo.*bytes"):
        F.read_flo(tmp_path / "short.flo")


def test_endpoint_error():
    a = np.zeros((2, 3, 2), np.float32)
    b = a.copy()
    b[..., 0] = 3
    b[..., 1] = 4
    assert F.endpoint_error(a, b) == pytest.approx(5.0)
    assert F.endpoint_error(a, b, reduction="none").shape == (2, 3)
    with pytest.raises(ValueError):
        F.endpoint_error(a, b[:1])


# ----------------------------------------------------------------------------------------- JPEG export
def test_jpeg_export_matches_the_community_format_and_round_trips(sample_frames, tmp_path):
    flows = F.video_flows(sample_frames, dict(nscales=3, warps=1, epsilon=0.05))
    written = F.export_flow_jpegs(flows, tmp_path)
    assert len(written) == 5
    sample_names = sorted(p.name for p in FORMAT_SAMPLE.iterdir() if re.match(r"[xy]_\d+\.jpg$", p.name))
    assert sorted(p.name for p in tmp_path.iterdir()) == sample_names
    for name in sample_names:
        ours = cv2.imread(str(tmp_path / name), cv2.IMREAD_UNCHANGED)
        theirs = cv2.imread(str(FORMAT_SAMPLE / name), cv2.IMREAD_UNCHANGED)
        assert ours.dtype == theirs.dtype == np.uint8
        assert ours.ndim == theirs.ndim == 2 and ours.shape == theirs.shape == (240, 320)
        # Same JPEG quality as the sample: identical quantisation tables.
        with Image.open(tmp_path / name) as a, Image.open(FORMAT_SAMPLE / name) as b:
            assert a.mode == b.mode == "L" and a.quantization == b.quantization
    back = F.read_flow_jpegs(tmp_path)
    assert back.shape == flows.shape and back.dtype == np.float32
    # Quantisation costs up to half a step; JPEG (quality 95, like the sample) adds a little, mostly
    # at motion edges (measured: mean 0.070 px, 98% within one step, max 7 steps).
    diff = np.abs(back - flows)
    assert diff.mean() <= STEP, diff.mean()
    assert np.mean(diff <= STEP) >= 0.95, np.mean(diff <= STEP)
    assert diff.max() <= 12 * STEP, diff.max()


def test_read_flow_jpegs_reads_the_community_sample_and_rejects_gaps(tmp_path):
    require(FORMAT_SAMPLE)
    ref = F.read_flow_jpegs(FORMAT_SAMPLE)
    assert ref.shape == (5, 240, 320, 2) and ref.dtype == np.float32
    assert ref.min() >= -20 and ref.max() <= 20
    F.export_flow_jpegs(ref[:3], tmp_path)
    (tmp_path / "x_00002.jpg").unlink()
    with pytest.raises(BadInputError, match="partner"):
        F.read_flow_jpegs(tmp_path)
    (tmp_path / "y_00002.jpg").unlink()
    with pytest.raises(BadInputError, match="gap"):
        F.read_flow_jpegs(tmp_path)


# --------------------------------------------------------------------------------------- videos, pool
def test_every_real_clip_gives_frames_minus_one_flows_through_the_pool():
    """All clips of realdata/videos, decoded inside two spawned workers (short side 64, QUICK params)."""
    require(VIDEOS)
    counts = manifest_frame_counts(REALDATA)
    paths = sorted(p for p in VIDEOS.iterdir() if p.suffix in (".mp4", ".avi"))
    assert len(paths) == len(counts) == 13
    jobs = [(p.name, functools.partial(decode_video, p, 64)) for p in paths]
    results = dict(F.map_video_flows(jobs, workers=2, params=QUICK))
    assert set(results) == set(counts)
    for name, fl in results.items():
        assert not isinstance(fl, BaseException), (name, fl)
        assert fl.shape[0] == counts[name] - 1, (name, fl.shape, counts[name])
        assert fl.dtype == np.float32 and fl.shape[-1] == 2 and min(fl.shape[1:3]) == 64
        assert np.isfinite(fl).all() and np.abs(fl).max() <= 20
    # Same bytes as in the calling process.
    name = "v_Shotput_g05_c02.avi"
    np.testing.assert_array_equal(results[name], F.video_flows(decode_video(VIDEOS / name, 64), QUICK))


def test_pool_reports_bad_items_and_keeps_the_good_ones(half_pairs):
    clip = np.stack([_half(half_pairs["0000000"][0]), _half(half_pairs["0000000"][1])])
    jobs = [
        ("good1", clip),
        ("float_frames", clip.astype(np.float32)),
        ("missing_file", functools.partial(decode_video, Path("/nonexistent/clip.mp4"), 64)),
        ("worker_dies", functools.partial(os._exit, 3)),
        ("good2", clip[::-1].copy()),
        ("unpicklable", lambda: clip),
    ]
    results = dict(F.map_video_flows(iter(jobs), workers=2, params=QUICK))
    assert set(results) == {k for k, _ in jobs}
    np.testing.assert_array_equal(results["good1"], F.video_flows(clip, QUICK))
    np.testing.assert_array_equal(results["good2"], F.video_flows(clip[::-1].copy(), QUICK))
    assert isinstance(results["float_frames"], TypeError)
    assert "flow worker pid" in "".join(getattr(results["float_frames"], "__notes__", []))
    assert isinstance(results["missing_file"], (BadInputError, OSError, ValueError))
    assert isinstance(results["worker_dies"], F.FlowWorkerError)
    assert isinstance(results["unpicklable"], Exception)
    assert not multiprocessing.active_children()  # every worker was stopped


def test_pool_with_zero_workers_runs_in_process(half_pairs):
    clip = np.stack([_half(half_pairs["0000001"][0]), _half(half_pairs["0000001"][1])])
    results = dict(F.map_video_flows([("a", clip), ("b", clip[:1].astype(np.int16))], workers=0, params=QUICK))
    np.testing.assert_array_equal(results["a"], F.video_flows(clip, QUICK))
    assert isinstance(results["b"], TypeError)
    assert F.video_flows(clip[:1], QUICK).shape == (0,) + clip.shape[1:3] + (2,)
    with pytest.raises(ValueError, match="backend"):  # checked at the call, not at the first result
        F.map_video_flows([], backend="cuda")
    with pytest.raises(TypeError, match="unknown"):
        F.map_video_flows([], params={"iterations": 3})


# ------------------------------------------------------------------------------------- torch dispatch
def test_torch_backend_calls_the_batched_function_with_a_batch_of_one(monkeypatch):
    calls = []

    def fake_batch(prev, nxt, device=None, **params):
        calls.append((prev.shape, nxt.shape, prev.dtype, device, params))
        out = np.zeros(prev.shape + (2,), np.float32)
        out[..., 0] = 25.0  # beyond the bound: must come back clipped
        return out

    fake = types.ModuleType("data.tvl1_torch")
    fake.tvl1_flow_batch = fake_batch
    monkeypatch.setitem(sys.modules, "data.tvl1_torch", fake)
    rgb = np.zeros((6, 7, 3), np.uint8)
    fl = F.tvl1_flow(rgb, rgb, backend="torch", device="cpu", warps=2)
    assert fl.shape == (6, 7, 2) and fl.dtype == np.float32 and fl[..., 0].max() == 20.0
    (ps, ns, dt, dev, params), = calls
    assert ps == ns == (1, 6, 7) and dt == np.uint8 and dev == "cpu"
    assert params == F.resolve_tvl1_params({"warps": 2})
    calls.clear()
    assert F.video_flows(np.zeros((5, 6, 7, 3), np.uint8), backend="torch", torch_batch=3).shape == (4, 6, 7, 2)
    assert [c[0] for c in calls] == [(3, 6, 7), (1, 6, 7)]


def test_torch_backend_runs_the_real_batched_implementation():
    """End to end through data/tvl1_torch.py on CPU (tiny frames, QUICK parameters)."""
    pytest.importorskip("torch")
    tvl1_torch = pytest.importorskip("data.tvl1_torch")
    assert callable(tvl1_torch.tvl1_flow_batch)
    rng = np.random.default_rng(0)
    a = cv2.GaussianBlur((rng.random((40, 48)) * 255).astype(np.uint8), (5, 5), 1.5)
    b = np.roll(a, 1, axis=1)
    fl = F.tvl1_flow(a, b, backend="torch", device="cpu", **QUICK)
    assert fl.shape == (40, 48, 2) and fl.dtype == np.float32
    assert np.isfinite(fl).all() and np.abs(fl).max() <= 20
    assert F.video_flows(np.stack([a, b, a]), QUICK, backend="torch", device="cpu").shape == (2, 40, 48, 2)


def test_a_reused_opencv_object_is_not_changed_by_a_tiny_video():
    """OpenCV lowers nscales after an image too small for the pyramid; later videos must not inherit it."""
    from data.flow import video_flows

    rng = np.random.default_rng(0)
    big = rng.integers(0, 255, (3, 96, 96, 3), np.uint8)
    big = cv2.GaussianBlur(big.reshape(-1, 96, 3), (0, 0), 2).reshape(3, 96, 96, 3)
    tiny = rng.integers(0, 255, (2, 20, 20, 3), np.uint8)
    params = {"nscales": 5, "warps": 1, "outer_iterations": 1, "inner_iterations": 5}
    before = video_flows(big, params)
    video_flows(tiny, params)
    after = video_flows(big, params)
    assert np.array_equal(before, after)
