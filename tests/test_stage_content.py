"""Each data stage's content against the pure function it wraps (not one run against another), on a tiny SYN.

Stored values go through the store's encodings (JPEG frames, quantised JPEG flows), which are deterministic, so
the expected value is the pure function's output passed through the same encode/decode: the comparison is exact.
- EstimateDepth (SYN: oracle depth): float16 inverse depth in [0, 1] (min 0, max 1), the min-max normalisation
  of the ground-truth PNG, with the min and max in the item attributes;
- SynthesizeSourceVideos: ``synthesize_video`` of the stored still and inverse depth with the item's seed;
- ExtractFlow: ``video_flows`` of the frames stored upstream (decoded), source and target.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from data import codec
from data.store import StoreReader
from tests.pipeline_helpers import build, reset_config, tiny_syn_config, use_config


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stage_content")
    use_config(tmp / "luigi.cfg", tiny_syn_config(tmp / "work", source_shards=2, target_shards=2))
    from pipeline import DecodeTargetVideos, EstimateDepth, ExtractFlow, SynthesizeSourceVideos

    tasks = {"depth": EstimateDepth(benchmark="SYN", shard=0), "synth": SynthesizeSourceVideos(benchmark="SYN", shard=0),
             "decode": DecodeTargetVideos(benchmark="SYN", shard=1),
             "flow_source": ExtractFlow(benchmark="SYN", domain="source", shard=0),
             "flow_target": ExtractFlow(benchmark="SYN", domain="target", shard=1)}
    assert build(tasks.values())
    yield tasks
    reset_config()


def _encoded_frames(frames, reader):
    enc = reader.attrs["frame_encoding"]
    return np.stack([codec.decode_frame(codec.encode_frame(f, enc)) for f in frames])


def _encoded_flows(flows, reader):
    enc = reader.attrs["flow_encoding"]
    return np.stack([codec.decode_flow(codec.encode_flow(f, enc)) for f in flows])


def test_depth_is_float16_min_max_normalised_ground_truth_inverse_depth(syn):
    from pipeline.depth import oracle_depth_path

    store = StoreReader(syn["depth"].shard_file())
    assert len(store) >= 2
    for item_id in store.ids:
        inv = store.read_array(item_id, "inverse_depth")
        attrs = store.item_attrs(item_id)
        assert inv.dtype == np.float16 and inv.min() == 0 and inv.max() == 1, item_id
        image = store.read_frames(item_id, [0])[0]
        assert inv.shape == image.shape[:2]
        gt = cv2.imread(str(oracle_depth_path(store.source_path(item_id))), cv2.IMREAD_UNCHANGED)
        assert gt is not None and gt.dtype == np.uint16
        gt = gt.astype(np.float32) / 65535.0
        if gt.shape != inv.shape:
            gt = cv2.resize(gt, inv.shape[::-1], interpolation=cv2.INTER_LINEAR)
        lo, hi = float(gt.min()), float(gt.max())
        assert attrs["inverse_depth_min"] == pytest.approx(lo, abs=1e-7)
        assert attrs["inverse_depth_max"] == pytest.approx(hi, abs=1e-7)
        assert hi > lo
        expected = ((gt - lo) / (hi - lo)).astype(np.float16)
        assert np.array_equal(inv, expected), item_id


def test_synthesis_is_synthesize_video_of_the_stored_still_with_the_item_seed(syn):
    from data.synthesis import item_seed, synthesize_video

    task = syn["synth"]
    depth, videos = StoreReader(syn["depth"].shard_file()), StoreReader(task.shard_file())
    assert videos.ids == depth.ids
    for item_id in videos.ids:
        still = depth.read_frames(item_id, [0])[0]
        inverse_depth = depth.read_array(item_id, "inverse_depth").astype(np.float32)
        expected = synthesize_video(still, inverse_depth, num_frames=task.num_frames,
                                    seed=item_seed(item_id, task.motion_seed)).frames
        got = videos.read_frames(item_id)
        assert got.shape == (task.num_frames, *still.shape)
        assert np.array_equal(got, _encoded_frames(expected, videos)), item_id
        assert videos.label(item_id) == depth.label(item_id)
    # the seed matters: another item's seed gives other frames
    item_id = videos.ids[0]
    other = synthesize_video(depth.read_frames(item_id, [0])[0],
                             depth.read_array(item_id, "inverse_depth").astype(np.float32),
                             num_frames=task.num_frames, seed=item_seed(item_id, task.motion_seed) + 1).frames
    assert not np.array_equal(videos.read_frames(item_id), _encoded_frames(other, videos))


@pytest.mark.parametrize("domain", ["source", "target"])
def test_flow_is_video_flows_of_the_stored_frames(syn, domain):
    from data.flow import video_flows

    task = syn[f"flow_{domain}"]
    frames_store = StoreReader(task.requires().shard_file())
    flows = StoreReader(task.shard_file())
    assert flows.ids == frames_store.ids and len(flows.ids) >= 1
    cv2.setNumThreads(1)  # as the stage's single-threaded workers
    for item_id in flows.ids:
        frames = frames_store.read_frames(item_id)
        expected = _encoded_flows(video_flows(frames, params=task.tvl1_params, backend=task.backend), flows)
        got = flows.read_flow(item_id)
        assert got.shape == (len(frames) - 1, *frames.shape[1:3], 2)
        assert np.array_equal(got, expected), (domain, item_id, float(np.abs(got - expected).max()))
        assert np.abs(got).max() > 0.1, "a flow of zeros would pass a weaker test"
