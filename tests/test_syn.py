"""SYN, the embedded benchmark: its fixed properties (data/syn.py, README "The SYN benchmark")."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.syn import (
    SYN_CLASSES,
    SYN_FORMAT_VERSION,
    SynConfig,
    _class_params,
    generate_syn,
    render_still,
    render_target_video,
    syn_properties,
)

SMALL = SynConfig(seed=0, stills_per_class=3, videos_per_class=6)


@pytest.fixture(scope="module")
def syn_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("syn") / "SYN"
    generate_syn(root, SMALL)
    return root


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _decode(path: Path) -> np.ndarray:
    """All frames of a video as grey uint8, counted by decoding."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    cap.release()
    return np.stack(frames) if frames else np.zeros((0, 1, 1), np.uint8)


def _flows(grey: np.ndarray) -> np.ndarray:
    """Farneback flow of consecutive frames, minus each frame's median flow (the camera shake)."""
    out = []
    for a, b in zip(grey[:-1], grey[1:]):
        f = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 9, 3, 5, 1.1, 0)
        out.append(f - np.median(f.reshape(-1, 2), axis=0))
    return np.stack(out)


def _aligned_silhouette(still: dict, size: int = 32) -> np.ndarray:
    """The figure's coverage cropped to its bounding box, resized to size x size, facing right."""
    mask = still["mask"]
    ys, xs = np.nonzero(mask > 0.5)
    crop = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    return crop[:, ::-1] if still["facing"] < 0 else crop


# -- layout and determinism ---------------------------------------------------------------------------

def test_has_at_least_six_classes_in_the_folder_layout(syn_root):
    assert len(SYN_CLASSES) >= 6 and len(set(SYN_CLASSES)) == len(SYN_CLASSES)
    assert (syn_root / "classes.txt").read_text().split() == list(SYN_CLASSES)
    for cls in SYN_CLASSES:
        assert sorted(p.name for p in (syn_root / "source" / cls).iterdir()) == [
            f"{cls}_{i:04d}.png" for i in range(SMALL.stills_per_class)]
        assert sorted(p.name for p in (syn_root / "source_depth" / cls).iterdir()) == [
            f"{cls}_{i:04d}.png" for i in range(SMALL.stills_per_class)]
        assert sorted(p.name for p in (syn_root / "target" / cls).iterdir()) == [
            f"{cls}_{i:04d}.avi" for i in range(SMALL.videos_per_class)]
    meta = json.loads((syn_root / "syn.json").read_text())
    assert meta["format_version"] == SYN_FORMAT_VERSION
    assert meta["config"] == SMALL.to_dict()
    assert meta["classes"] == list(SYN_CLASSES)
    assert meta["properties"] == syn_properties()
    assert meta["counts"]["target"] == SMALL.videos_per_class * len(SYN_CLASSES)


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    tiny = SynConfig(seed=3, stills_per_class=2, videos_per_class=1)
    generate_syn(tmp_path / "a", tiny)
    generate_syn(tmp_path / "b", tiny)
    generate_syn(tmp_path / "c", SynConfig(seed=4, stills_per_class=2, videos_per_class=1))
    a, b, c = (_tree_bytes(tmp_path / n) for n in "abc")
    assert a == b
    assert a.keys() == c.keys()
    media = [k for k in a if k.endswith((".png", ".avi"))]
    assert all(a[k] != c[k] for k in media)
    assert not list(tmp_path.glob(".*tmp*")), "the temporary build folder was left behind"


def test_items_do_not_depend_on_the_counts(syn_root, tmp_path):
    # Each item has its own random stream: a bigger dataset starts with the same files.
    generate_syn(tmp_path / "big", SynConfig(seed=0, stills_per_class=4, videos_per_class=7))
    for rel in ("source/run/run_0002.png", "source_depth/jump/jump_0000.png", "target/clap/clap_0005.avi"):
        assert (tmp_path / "big" / rel).read_bytes() == (syn_root / rel).read_bytes()


def test_generating_into_an_existing_empty_folder_works(tmp_path):
    (tmp_path / "SYN").mkdir()
    summary = generate_syn(tmp_path / "SYN", SynConfig(stills_per_class=1, videos_per_class=1))
    assert summary["counts"]["target"] == len(SYN_CLASSES)
    assert (tmp_path / "SYN" / "syn.json").is_file()


def test_generating_again_is_a_no_op_and_a_different_config_is_refused(syn_root):
    before = _tree_bytes(syn_root)
    assert generate_syn(syn_root, SMALL)["seconds"] == 0.0
    assert _tree_bytes(syn_root) == before
    with pytest.raises(FileExistsError):
        generate_syn(syn_root, SynConfig(seed=1, stills_per_class=3, videos_per_class=6))


# -- source stills and depth ----------------------------------------------------------------------------

def test_every_still_has_a_same_size_16bit_inverse_depth_with_the_figure_nearer(syn_root):
    for ci, cls in enumerate(SYN_CLASSES):
        for i in range(SMALL.stills_per_class):
            name = f"{cls}/{cls}_{i:04d}.png"
            rgb = cv2.imread(str(syn_root / "source" / name), cv2.IMREAD_UNCHANGED)
            depth = cv2.imread(str(syn_root / "source_depth" / name), cv2.IMREAD_UNCHANGED)
            assert rgb.shape == (SMALL.height, SMALL.width, 3) and rgb.dtype == np.uint8
            assert depth.shape == rgb.shape[:2] and depth.dtype == np.uint16
            assert depth.min() == 0 and depth.max() == 65535  # min-max normalised like write_depth(bits=2)
            still = render_still(SMALL, ci, i)
            assert np.array_equal(rgb[..., ::-1], still["rgb"])
            figure = still["mask"] >= 0.5
            assert figure.sum() > 0.02 * figure.size
            # Nearer than whatever the figure hides, pixel by pixel...
            assert np.all(still["inverse_depth"][figure] > still["background_inverse_depth"][figure])
            # ...and, in the file, nearer than all the background in the rows above its lowest point.
            rows = np.nonzero(figure.any(axis=1))[0]
            above = np.zeros_like(figure)
            above[rows.min():rows.max() - 2] = True
            background = above & (still["mask"] == 0)
            assert np.median(depth[figure]) > depth[background].max()


def test_walk_and_run_stills_share_every_pose_parameter_except_the_lean():
    for k in range(20):
        walk = _class_params("walk", np.random.default_rng(k))
        run = _class_params("run", np.random.default_rng(k))
        assert walk.keys() == run.keys()
        for name in walk.keys() - {"lean", "period", "speed"}:
            assert walk[name] == run[name], name
        # The lean ranges overlap: no observer of a single still can always tell them apart.
    leans = {c: [_class_params(c, np.random.default_rng(k))["lean"] for k in range(400)] for c in ("walk", "run")}
    assert max(leans["walk"]) > min(leans["run"])
    assert np.mean(leans["run"]) - np.mean(leans["walk"]) < 10.0


def test_walk_and_run_stills_differ_only_by_a_weak_cue():
    # Class-mean aligned silhouettes (40 stills a class): walk and run are much closer to each other than
    # any other pair, yet not identical.
    n = 40
    means = {cls: np.mean([_aligned_silhouette(render_still(SMALL, ci, i)) for i in range(n)], axis=0)
             for ci, cls in enumerate(SYN_CLASSES)}
    dist = {(a, b): float(np.abs(means[a] - means[b]).mean()) for a, b in itertools.combinations(SYN_CLASSES, 2)}
    weak = dist[("walk", "run")]
    others = min(d for pair, d in dist.items() if pair != ("walk", "run"))
    assert weak <= 0.5 * others, (weak, others)
    halves = [np.mean([_aligned_silhouette(render_still(SMALL, 0, i)) for i in range(j, 2 * n, 2)], axis=0)
              for j in (n, n + 1)]
    assert weak > float(np.abs(halves[0] - halves[1]).mean()), "walk and run stills show no cue at all"


# -- target videos ------------------------------------------------------------------------------------------

def test_every_target_video_decodes_to_at_least_32_frames(syn_root):
    videos = sorted((syn_root / "target").rglob("*.avi"))
    assert len(videos) == SMALL.videos_per_class * len(SYN_CLASSES)
    for path in videos:
        frames = _decode(path)
        assert frames.shape == (SMALL.frames_per_video, SMALL.height, SMALL.width), path
        assert frames.shape[0] >= 32


def test_run_moves_at_least_twice_as_fast_as_walk(syn_root):
    speed = {}
    for ci, cls in ((0, "walk"), (1, "run")):
        per_video = []
        for i in range(SMALL.videos_per_class):
            flow = _flows(_decode(syn_root / "target" / cls / f"{cls}_{i:04d}.avi"))
            masks = render_target_video(SMALL, ci, i)["masks"][:-1] >= 0.5
            per_video.append(float(np.linalg.norm(flow, axis=-1)[masks].mean()))
        speed[cls] = per_video
    assert np.mean(speed["run"]) >= 2.0 * np.mean(speed["walk"]), speed
    assert min(speed["run"]) > max(speed["walk"]), speed


def test_source_and_target_appearance_differ():
    stills = [render_still(SMALL, ci, i) for ci in range(len(SYN_CLASSES)) for i in range(8)]
    videos = [render_target_video(SMALL, ci, i) for ci in range(len(SYN_CLASSES)) for i in range(8)]
    t = [(5 * k) % SMALL.frames_per_video for k in range(len(videos))]
    src = [(s["rgb"], s["mask"]) for s in stills]
    tgt = [(v["frames"][k], v["masks"][k]) for v, k in zip(videos, t)]

    def warm_background(pairs):  # share of background pixels with a red-to-yellow hue
        shares = []
        for rgb, mask in pairs:
            hue = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 0][mask == 0].astype(int) * 2
            shares.append(np.mean((hue <= 60) | (hue >= 330)))
        return float(np.mean(shares))

    def clothing_saturation(pairs):
        return float(np.mean([cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1][mask >= 0.9].mean() / 255
                              for rgb, mask in pairs]))

    def mean_lab(pairs):  # per image: the mean CIE Lab colour of the background
        return np.array([cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)[mask == 0].mean(axis=0) for rgb, mask in pairs])

    # Palette: warm indoor scenes -> cool outdoor scenes; saturated -> muted clothing.
    assert warm_background(src) > 0.6 > 0.35 > warm_background(tgt)
    assert clothing_saturation(src) > 1.5 * clothing_saturation(tgt)
    # An image's mean colour alone tells its domain (leave-one-out nearest centroid).
    x = np.concatenate([mean_lab(src), mean_lab(tgt)])
    y = np.repeat([0, 1], [len(src), len(tgt)])
    correct = 0
    for k in range(len(x)):
        keep = np.arange(len(x)) != k
        centroids = [x[keep & (y == d)].mean(axis=0) for d in (0, 1)]
        correct += int(np.argmin([np.linalg.norm(x[k] - c) for c in centroids]) == y[k])
    assert correct / len(x) >= 0.75, correct / len(x)  # chance: 0.5 (the palettes overlap a little)
    # Sensor noise: a target video's static background changes from frame to frame; nothing in the
    # rendering of a still is random per pixel.
    frames, masks = videos[0]["frames"].astype(np.float32), videos[0]["masks"]
    static = (masks[:-1] == 0) & (masks[1:] == 0)
    assert np.abs(frames[1:] - frames[:-1]).mean(axis=-1)[static].mean() > 1.0


def _motion_feature(flow: np.ndarray) -> np.ndarray:
    """A few numbers anyone would compute from a video's flow: speed of the moving parts, horizontal vs
    vertical share, net horizontal drift, and the dominant rhythm."""
    mag = np.linalg.norm(flow, axis=-1)
    moving = mag > 0.5
    u, v = np.abs(flow[..., 0])[moving], np.abs(flow[..., 1])[moving]
    drift = np.abs(np.array([f[..., 0][m].mean() if m.any() else 0.0 for f, m in zip(flow, moving)])).mean()
    energy = mag.reshape(len(mag), -1).mean(axis=1)
    spectrum = np.abs(np.fft.rfft(energy - energy.mean()))
    rhythm = np.argmax(spectrum[1:]) + 1
    return np.array([np.percentile(mag, 99), u.mean() / (u.mean() + v.mean()), drift, rhythm / len(energy),
                     moving.mean()])


def test_motion_alone_tells_the_classes_apart_in_target_videos(syn_root):
    feats, labels = [], []
    for ci, cls in enumerate(SYN_CLASSES):
        for i in range(SMALL.videos_per_class):
            feats.append(_motion_feature(_flows(_decode(syn_root / "target" / cls / f"{cls}_{i:04d}.avi"))))
            labels.append(ci)
    x, y = np.array(feats), np.array(labels)
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-9)
    correct = 0
    for k in range(len(x)):  # leave-one-out nearest centroid
        keep = np.arange(len(x)) != k
        centroids = np.stack([x[keep & (y == c)].mean(axis=0) for c in range(len(SYN_CLASSES))])
        correct += int(np.argmin(np.linalg.norm(centroids - x[k], axis=1)) == y[k])
    accuracy = correct / len(x)
    assert accuracy >= 3.0 / len(SYN_CLASSES), accuracy  # chance is 1/6
    # The net sideways drift alone splits walk from run: every walk video drifts slower than every run video.
    drift = {c: x[y == c, 2] for c in (0, 1)}
    assert drift[0].max() < drift[1].min()


def test_properties_name_every_class_and_the_weak_pair():
    text = "\n".join(syn_properties())
    for cls in SYN_CLASSES:
        assert f"{cls}:" in text
    assert "walk/run" in text and "MJPG" in text
