"""DecodeTargetVideos: target videos -> frames in the store (short side from luigi.cfg)."""
from __future__ import annotations

import luigi

from data.video import decode_video
from pipeline.base import ShardedStage, index_slice
from pipeline.index import TargetIndex
from pipeline.settings import benchmark_setting


class DecodeTargetVideos(ShardedStage):
    """Decode every frame of each target video of this shard, resized to the configured short side."""

    domain = "target"
    short_side = luigi.IntParameter(default=0, description="frame short side; 0 = [benchmark.<name>] frame_short_side")
    key_params = ("frame_short_side",)

    @property
    def frame_short_side(self) -> int:
        return self.short_side or benchmark_setting(self.benchmark, "frame_short_side", 256, int)

    def requires(self):
        return TargetIndex(benchmark=self.benchmark)

    def items(self):
        return index_slice(self.requires().index_file(), self.shard, self.n_shards)

    def process_item(self, item, writer) -> None:
        frames = decode_video(item.path, self.frame_short_side)
        writer.add(item.id, label=item.label, source_path=item.path, frames=frames,
                   attrs={"class_name": item.class_name})
