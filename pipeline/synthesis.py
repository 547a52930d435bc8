"""SynthesizeSourceVideos: each still becomes a short video by a random virtual camera motion through its
back-projected depth (paper Sec. 3.1)."""
from __future__ import annotations

import numpy as np

from data.store import StoreReader
from pipeline.base import ShardedStage
from pipeline.depth import EstimateDepth
from pipeline.device import stage_device
from pipeline.settings import benchmark_setting


class SynthesizeSourceVideos(ShardedStage):
    """16 frames per image by default (num_frames in luigi.cfg); ground-truth flow optional."""

    domain = "source"
    key_params = ("num_frames", "motion_seed", "redepth", "store_gt_flow", "hole_filler")
    # 2: holes filled by push-pull by default (was TELEA), and every item records its hole filler.
    format_version = 2

    @property
    def num_frames(self) -> int:
        return benchmark_setting(self.benchmark, "source_num_frames", 16, int)

    @property
    def motion_seed(self) -> int:
        return benchmark_setting(self.benchmark, "motion_seed", 1024, int)

    @property
    def redepth(self) -> bool:
        return benchmark_setting(self.benchmark, "redepth", False, bool)

    @property
    def store_gt_flow(self) -> bool:
        return benchmark_setting(self.benchmark, "store_gt_flow", False, bool)

    @property
    def hole_filler(self) -> str:
        from data.synthesis import DEFAULT_HOLE_FILLER, check_hole_filler

        name = benchmark_setting(self.benchmark, "hole_filler", DEFAULT_HOLE_FILLER)
        try:
            return check_hole_filler(name)
        except ValueError as e:
            raise ValueError(f"{e} (`hole_filler` in [benchmark.{self.benchmark}] of luigi.cfg)") from None

    def requires(self):
        return EstimateDepth(benchmark=self.benchmark, shard=self.shard, num_shards=self.num_shards)

    def items(self):
        self.depth_store = StoreReader(self.requires().shard_file())
        return self.depth_store.ids

    def before_items(self) -> None:
        self.device = stage_device(self.benchmark)
        self.redepth_fn = None
        if self.redepth:  # the released code's choice: MiDaS on every generated frame
            from model.depth import predict_inverse_depth

            upstream = self.requires()
            upstream.before_items()
            model = upstream.model
            self.redepth_fn = (lambda im: predict_inverse_depth(model, im)) if model is not None else None

    def process_item(self, item_id, writer) -> None:
        from data.synthesis import item_seed, synthesize_video

        still = self.depth_store.read_frames(item_id, [0])[0]
        inverse_depth = self.depth_store.read_array(item_id, "inverse_depth").astype(np.float32)
        result = synthesize_video(still, inverse_depth, num_frames=self.num_frames,
                                  seed=item_seed(item_id, self.motion_seed), device=self.device,
                                  redepth_fn=self.redepth_fn, return_flow=self.store_gt_flow,
                                  hole_filler=self.hole_filler)
        arrays = {"gt_flow": result.flow.astype(np.float16)} if self.store_gt_flow else {}
        attrs = self.depth_store.item_attrs(item_id)
        writer.add(item_id, label=self.depth_store.label(item_id),
                   source_path=self.depth_store.source_path(item_id), frames=result.frames, arrays=arrays,
                   attrs={"class_name": attrs.get("class_name", ""), "hole_filler": self.hole_filler})
