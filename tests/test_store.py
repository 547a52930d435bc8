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


# --- checksums ---------------------------------------------------------------------------------------------------

def _flip(src, dst, offset: int, mask: int = 0x01):
    """A copy of `src` at `dst` with one byte changed (a new file: HDF5 caches files it has open)."""
    data = bytearray(src.read_bytes())
    data[offset] ^= mask
    dst.write_bytes(data)
    return dst


def _offset_of(path, needle: bytes) -> int:
    data = path.read_bytes()
    at = data.find(needle)
    assert at >= 0 and data.find(needle, at + 1) < 0, "the bytes occur once in the file"
    return at


def _sample(tmp_path):
    path = tmp_path / "s.h5"
    with ShardWriter(path, stage="EstimateDepth", benchmark="SYN", params={"a": 1}) as w:
        w.add("walk/a.png", label=3, source_path="/data/w-a", frames=_video(), flow=_flow(),
              arrays={"inverse_depth": np.linspace(0, 1, 16 * 20, dtype=np.float16).reshape(16, 20)},
              attrs={"class_name": "class-walk", "inverse_depth_min": 0.5})
        w.add("run/b.png", label=1, source_path="/data/r-b", frames=_video(seed=3))
    with h5py.File(path, "r") as f:
        frame2 = f["items/0000000/frames"][2].tobytes()
        flow1 = f["items/0000000/flow"][1].tobytes()
        depth_chunk = f["items/0000000/inverse_depth"].id.get_chunk_info(0)
    return path, frame2, flow1, depth_chunk.byte_offset


def test_an_untouched_file_passes_every_check(tmp_path):
    from data.store import check_payload

    path, *_ = _sample(tmp_path)
    assert check_payload(path) == [] and check_payload(path, isolate=False) == []
    r = StoreReader(path)
    assert r.read_frames("walk/a.png").shape == (6, 24, 32, 3) and r.read_flow("walk/a.png").shape == (5, 24, 32, 2)
    assert r.read_array("walk/a.png", "inverse_depth").shape == (16, 20)
    assert r.item_attrs("walk/a.png") == {"class_name": "class-walk", "inverse_depth_min": 0.5}
    with h5py.File(path, "r") as f:  # every fixed-size dataset carries HDF5's own Fletcher-32 filter
        assert f["labels"].fletcher32 and f["num_frames"].fletcher32 and f["items/0000000/inverse_depth"].fletcher32
        assert len(f["items/0000000/frames_crc32"]) == 6 and len(f["ids_crc32"]) == 2


def test_a_flipped_byte_in_a_frame_is_named_on_read_and_by_check_payload(tmp_path):
    from data.store import DamagedItemError, check_payload

    path, frame2, _, _ = _sample(tmp_path)
    bad = _flip(path, tmp_path / "bad.h5", _offset_of(path, frame2) + len(frame2) // 2)
    r = StoreReader(bad)  # the item list is intact: the file opens
    with pytest.raises(DamagedItemError, match=r"bad\.h5: item 'walk/a\.png' of this EstimateDepth output is "
                                               r"damaged \(frames\[2\] fails its CRC-32 checksum\)") as info:
        r.read_frames("walk/a.png", [0, 2])
    assert info.value.item_id == "walk/a.png" and info.value.stage == "EstimateDepth"
    assert r.read_frames("walk/a.png", [0, 1, 3]).shape == (3, 24, 32, 3)  # the other frames are fine
    assert r.read_frames("run/b.png").shape == (6, 24, 32, 3)  # and so is the other item
    assert check_payload(bad) == ["item 'walk/a.png' (number 0): frames[2] fails the CRC-32 checksum"]


def test_flipped_bytes_in_flow_depth_attributes_and_ids_are_detected(tmp_path):
    from data.store import DamagedItemError, check_payload

    path, _, flow1, depth_at = _sample(tmp_path)
    flow = _flip(path, tmp_path / "flow.h5", _offset_of(path, flow1) + 3)
    with pytest.raises(DamagedItemError, match=r"item 'walk/a\.png'.*flow\[1\] fails its CRC-32"):
        StoreReader(flow).read_flow("walk/a.png")
    assert check_payload(flow) == ["item 'walk/a.png' (number 0): flow[1] fails the CRC-32 checksum"]

    depth = _flip(path, tmp_path / "depth.h5", depth_at + 100)  # inside the Fletcher-32 protected chunk
    with pytest.raises(DamagedItemError, match=r"item 'walk/a\.png'.*inverse_depth fails its checksum"):
        StoreReader(depth).read_array("walk/a.png", "inverse_depth")
    (line,) = check_payload(depth)
    assert line.startswith("item 'walk/a.png' (number 0): inverse_depth fails its checksum")

    attrs = _flip(path, tmp_path / "attrs.h5", _offset_of(path, b"class-walk") + 6)
    with pytest.raises(DamagedItemError, match=r"item 'walk/a\.png'.*attributes fail their CRC-32"):
        StoreReader(attrs).item_attrs("walk/a.png")
    assert check_payload(attrs) == ["item 'walk/a.png' (number 0): its attributes fail their CRC-32 checksum"]

    ids = _flip(path, tmp_path / "ids.h5", _offset_of(path, b"run/b.png") + 1)
    with pytest.raises(DamagedItemError, match=r"ids\.h5: its item list or attributes of this EstimateDepth output "
                                               r"is damaged \(ids\[1\] fails the CRC-32 checksum\)"):
        StoreReader(ids)
    assert check_payload(ids) == ["item list: ids[1] fails the CRC-32 checksum"]


def test_a_file_of_the_format_without_checksums_is_refused(tmp_path):
    from data.store import FORMAT_VERSION, check_payload

    path, *_ = _sample(tmp_path)
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 1
    assert FORMAT_VERSION == 2
    assert check_payload(path) == ["store format version 1 carries no checksums (this code writes version 2)"]
    with pytest.raises(ValueError, match="store format version 1"):
        StoreReader(path)


def test_reserved_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        with ShardWriter(tmp_path / "s.h5", stage="T", benchmark="SYN", params={}) as w:
            w.add("a", arrays={"x_crc32": np.zeros(2)})


def test_a_check_that_crashes_hdf5_is_reported_not_fatal(tmp_path, monkeypatch):
    """Damaged HDF5 metadata can segfault the library (seen in the byte-flip scan): the check runs in a
    child process, and the crash becomes a problem line."""
    import os
    import signal

    from data import store

    path, *_ = _sample(tmp_path)
    import faulthandler

    def crash(f):
        faulthandler.disable()  # (in the child) no crash report on the test's output
        os.kill(os.getpid(), signal.SIGSEGV)

    monkeypatch.setattr(store, "_file_problems", crash)
    assert store.check_payload(path) == ["checking it crashed the HDF5 library (signal SIGSEGV): the file's HDF5 "
                                         "metadata is damaged"]
