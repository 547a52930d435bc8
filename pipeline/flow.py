"""ExtractFlow: TV-L1 optical flow of every source (synthesised) and target video of a shard."""
from __future__ import annotations

import luigi

from data.store import StoreReader
from pipeline.base import ShardedStage
from pipeline.decode import DecodeTargetVideos
from pipeline.settings import benchmark_setting
from pipeline.synthesis import SynthesizeSourceVideos
from luigi.configuration import get_config

TVL1_KEYS = ("tau", "lambda_", "theta", "nscales", "warps", "epsilon", "inner_iterations", "outer_iterations",
             "scale_step", "gamma", "median_filtering")


def _number(raw: str):
    return float(raw) if any(c in raw.lower() for c in ".e") else int(raw)


def tvl1_params_from_config(benchmark: str) -> dict:
    """[tvl1] in luigi.cfg, then `tvl1_<key>` of [benchmark.<name>]; keys left out keep OpenCV's defaults."""
    cfg, out = get_config(), {}
    for key in TVL1_KEYS:
        if cfg.has_option("tvl1", key) and cfg.get("tvl1", key).strip():
            out[key] = _number(cfg.get("tvl1", key).strip())
        override = benchmark_setting(benchmark, f"tvl1_{key}", None)
        if override is not None:
            out[key] = _number(override)
    return out


class ExtractFlow(ShardedStage):
    """Flow t maps frame t to t+1, clipped to +-20, stored with the store's flow encoding."""

    domain = luigi.ChoiceParameter(choices=["source", "target"], default="target",
                                   description="source: synthesised videos; target: decoded target videos")
    key_params = ("domain", "tvl1_params", "backend")

    @property
    def tvl1_params(self) -> dict:
        from data.flow import TVL1_DEFAULTS

        return {**TVL1_DEFAULTS, **tvl1_params_from_config(self.benchmark)}

    @property
    def backend(self) -> str:
        return benchmark_setting(self.benchmark, "flow_backend", "opencv")

    @property
    def workers(self) -> int:
        import os

        return benchmark_setting(self.benchmark, "flow_workers", 0, int) or os.cpu_count() or 1

    @property
    def resources(self):
        return {"gpu": 1} if self.backend == "torch" and benchmark_setting(self.benchmark, "device", "auto") != "cpu" else {}

    def requires(self):
        upstream = SynthesizeSourceVideos if self.domain == "source" else DecodeTargetVideos
        return upstream(benchmark=self.benchmark, shard=self.shard, num_shards=self.num_shards)

    def extra_attrs(self) -> dict:
        import json

        from data.flow import flow_params_record

        return {"flow": json.dumps(flow_params_record(self.tvl1_params, self.backend), sort_keys=True)}

    def items(self):
        self.frames_store = StoreReader(self.requires().shard_file())
        return self.frames_store.ids

    @property
    def items_per_call(self) -> int:
        return max(1, 4 * self.workers)

    def process_items(self, item_ids, writer):
        from data.flow import map_video_flows

        jobs = ((item_id, self.frames_store.read_frames(item_id)) for item_id in item_ids)
        results = dict(map_video_flows(jobs, workers=self.workers, params=self.tvl1_params, backend=self.backend))
        failed = []
        for item_id in item_ids:  # write in shard order so the file is the same whatever finished first
            flows = results[item_id]
            if isinstance(flows, BaseException):
                failed.append((item_id, flows))
                continue
            writer.add(item_id, label=self.frames_store.label(item_id),
                       source_path=self.frames_store.source_path(item_id), flow=flows,
                       attrs={"num_frames": self.frames_store.num_frames(item_id)})
        return failed
