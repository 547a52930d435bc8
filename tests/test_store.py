import h5py
import numpy as np
import pytest

from data import codec
from data.store import ShardWriter, StoreCollection, StoreReader, is_complete


def _video(t=6, h=24, w=32, seed=0):
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 6 + seed * 20, y * 9, (x + y) * 3], -1).clip(0, 255).astype(np.uint8)
    return np.stack([np.roll(base, i, axis=1) for i in range(t)])


def _flow(t=5, h=24, w=32, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    smooth = np.stack([np.sin(x / 7.0) * 5, np.cos(y / 5.0) * 3], -1).astype(np.float32)
    return np.stack([smooth + rng.normal(0, 0.05, smooth.shape).astype(np.float32) * i for i in range(t)])


def _write(path, items):
    with ShardWriter(path, stage="Test", benchmark="SYN", params={"a": 1}) as w:
        for item_id, label, frames, flow in items:
            w.add(item_id, label=label, source_path=f"/data/{item_id}", frames=frames, flow=flow,
                  arrays={"inverse_depth": np.ones((4, 4), np.float16)}, attrs={"class_name": "walk"})


def test_round_trip_of_frames_flows_labels_and_attributes(tmp_path):
    path = tmp_path / "s.h5"
    frames, flow = _video(), _flow()
    _write(path, [("walk/a b!.png", 3, frames, flow), ("run/ü.png", -1, None, None)])
    r = StoreReader(path)
    assert r.ids == ["walk/a b!.png", "run/ü.png"] and r.labels.tolist() == [3, -1]
    assert r.num_frames("walk/a b!.png") == 6 and r.num_flows("walk/a b!.png") == 5
    assert r.source_path("run/ü.png") == "/data/run/ü.png"
    got = r.read_frames("walk/a b!.png")
    assert got.shape == frames.shape and np.abs(got.astype(int) - frames).mean() < 3  # JPEG
    f = r.read_flow("walk/a b!.png", [4, 0])
    assert f.shape == (2, 24, 32, 2) and np.linalg.norm(f[1] - flow[0], axis=-1).mean() < 0.1
    assert r.read_array("walk/a b!.png", "inverse_depth").dtype == np.float16
    assert r.item_attrs("walk/a b!.png")["class_name"] == "walk"
    assert r.params == {"a": 1} and r.attrs["complete"] == 1 and r.attrs["item_count"] == 2


def test_random_clip_read_returns_the_requested_frames_in_order(tmp_path):
    path = tmp_path / "s.h5"
    frames = np.stack([np.full((16, 16, 3), 10 * i, np.uint8) for i in range(20)])
    _write(path, [("v", 0, frames, None)])
    clip = StoreReader(path).read_frames("v", [7, 3, 3, 19])
    assert [int(round(c.mean() / 10)) for c in clip] == [7, 3, 3, 19]


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    path = tmp_path / "s.h5"
    with pytest.raises(RuntimeError):
        with ShardWriter(path, stage="Test", benchmark="SYN", params={}) as w:
            w.add("x", frames=_video())
            raise RuntimeError("disk full")
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_a_file_without_the_complete_attribute_is_not_complete(tmp_path):
    path = tmp_path / "s.h5"
    _write(path, [("a", 0, _video(), None)])
    assert is_complete(path)
    with h5py.File(path, "a") as f:
        del f.attrs["complete"]
    assert not is_complete(path)
    with pytest.raises(ValueError, match="not a complete store file"):
        StoreReader(path)


def test_truncated_or_garbage_files_are_not_complete(tmp_path):
    path = tmp_path / "s.h5"
    _write(path, [("a", 0, _video(), None)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert not is_complete(path)
    path.write_bytes(b"garbage")
    assert not is_complete(path)
    assert not is_complete(tmp_path / "missing.h5")


def test_duplicate_ids_are_refused(tmp_path):
    with pytest.raises(ValueError, match="duplicate"):
        _write(tmp_path / "s.h5", [("a", 0, None, None), ("a", 1, None, None)])


def test_collection_reads_across_shards_and_rejects_overlaps(tmp_path):
    _write(tmp_path / "0.h5", [("a", 0, _video(seed=1), None)])
    _write(tmp_path / "1.h5", [("b", 1, _video(seed=2), None)])
    c = StoreCollection([tmp_path / "0.h5", tmp_path / "1.h5"])
    assert c.ids == ["a", "b"] and c.labels.tolist() == [0, 1] and c.read_frames("b", [0]).shape == (1, 24, 32, 3)
    _write(tmp_path / "2.h5", [("a", 0, None, None)])
    with pytest.raises(ValueError, match="both"):
        StoreCollection([tmp_path / "0.h5", tmp_path / "2.h5"])


def test_flow_quantisation_follows_the_community_convention():
    v = np.array([-25.0, -20.0, 0.0, 20.0, 30.0], np.float32)
    assert codec.quantize_flow(v).tolist() == [0, 0, 128, 255, 255]
    assert np.abs(codec.dequantize_flow(codec.quantize_flow(v)) - np.clip(v, -20, 20)).max() <= 20 / 255 + 1e-6


def test_reader_survives_pickling_for_dataloader_workers(tmp_path):
    import pickle

    path = tmp_path / "s.h5"
    _write(path, [("a", 0, _video(), None)])
    r = StoreReader(path)
    r.read_frames("a", [0])  # opens the file in this process
    clone = pickle.loads(pickle.dumps(r))
    assert clone.read_frames("a", [1]).shape == (1, 24, 32, 3)
