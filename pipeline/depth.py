"""EstimateDepth: relative inverse depth per source image (MiDaS, or SYN's ground truth as `oracle`)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from data.images import load_rgb
from data.video import resize_short_side
from pipeline.base import FATAL_ERRORS, ShardedStage, index_slice
from pipeline.device import gpu_resources, stage_device
from pipeline.index import SourceIndex
from pipeline.settings import benchmark_setting


def normalise_inverse_depth(inv: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Min-max normalise to [0, 1] (the reference reads MiDaS's 16-bit PNG the same way) -> float16."""
    lo, hi = float(inv.min()), float(inv.max())
    return ((inv - lo) / max(hi - lo, 1e-12)).astype(np.float16), lo, hi


def oracle_depth_path(item_path: str) -> Path:
    """SYN keeps ground-truth inverse depth at source_depth/<class>/<name>.png beside source/."""
    p = Path(item_path)
    return p.parent.parent.parent / "source_depth" / p.parent.name / p.name


def read_oracle_inverse_depth(item_path: str) -> np.ndarray:
    import cv2

    path = oracle_depth_path(item_path)
    d = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if d is None:
        raise FileNotFoundError(f"{path}: ground-truth depth of {item_path} is missing or unreadable")
    return d.astype(np.float32) / 65535.0


class EstimateDepth(ShardedStage):
    """Inverse depth per source image into the store (float16 in [0, 1] plus the min/max used),
    together with the image resized to the configured short side (the synthesis input)."""

    domain = "source"
    key_params = ("depth_source", "depth_model", "weights_id", "frame_short_side")

    @property
    def resources(self):
        return gpu_resources(self.benchmark) if self.depth_source == "midas" else {}

    @property
    def depth_source(self) -> str:
        return benchmark_setting(self.benchmark, "depth_source", "midas")

    @property
    def depth_model(self) -> str:
        return benchmark_setting(self.benchmark, "depth_model", "dpt_beit_large_512")

    @property
    def frame_short_side(self) -> int:
        return benchmark_setting(self.benchmark, "frame_short_side", 256, int)

    @property
    def weights_path(self) -> str:
        return benchmark_setting(self.benchmark, "depth_weights", "")

    @property
    def weights_id(self) -> str:
        """Name and size of the weight file: changing the weights makes a new output."""
        if self.depth_source != "midas":
            return ""
        p = self.weights_path
        return f"{os.path.basename(p)}:{os.path.getsize(p)}" if p and os.path.isfile(p) else p

    @property
    def items_per_call(self) -> int:
        return benchmark_setting(self.benchmark, "depth_batch_size", 8, int)

    def requires(self):
        return SourceIndex(benchmark=self.benchmark)

    def items(self):
        return index_slice(self.requires().index_file(), self.shard, self.n_shards)

    def before_items(self) -> None:
        self.model = None
        if self.depth_source == "oracle":
            return
        from model import depth

        self.device = stage_device(self.benchmark)
        if self.depth_source == "random":  # explicit opt-in, for tests only
            self.model = depth.build_midas(self.depth_model).to(self.device).eval()
        elif self.depth_source == "midas":
            if not self.weights_path:
                raise RuntimeError(f"MiDaS weights for {self.depth_model} are not configured: set `depth_weights` "
                                   f"in [benchmark.{self.benchmark}] of luigi.cfg to the local file "
                                   f"{self.depth_model}.pt (or depth_source = oracle for SYN)")
            self.model = depth.load_midas(self.depth_model, self.weights_path, device=self.device)
        else:
            raise ValueError(f"unknown depth_source {self.depth_source!r} in [benchmark.{self.benchmark}] "
                             "(use midas, oracle or random)")

    def process_items(self, items, writer):
        failed, loaded = [], []
        for item in items:
            try:
                image = resize_short_side(load_rgb(item.path), self.frame_short_side)
                loaded.append((item, image))
            except Exception as e:
                failed.append((item, e))
        if self.model is not None and loaded:
            from model.depth import predict_inverse_depth_batch

            depths = predict_inverse_depth_batch(self.model, [im for _, im in loaded], device=self.device)
        else:
            depths = []
            for item, image in loaded:
                try:
                    depths.append(_resize_to(read_oracle_inverse_depth(item.path), image.shape[:2]))
                except Exception as e:
                    failed.append((item, e))
                    depths.append(None)
        for (item, image), inv in zip(loaded, depths):
            if inv is None:
                continue
            try:  # one item that cannot be stored (e.g. too long a side for JPEG) must not cost the shard
                norm, lo, hi = normalise_inverse_depth(np.asarray(inv, np.float32))
                writer.add(item.id, label=item.label, source_path=item.path, frames=image[None],
                           arrays={"inverse_depth": norm},
                           attrs={"class_name": item.class_name, "inverse_depth_min": lo, "inverse_depth_max": hi})
            except FATAL_ERRORS:
                raise
            except Exception as e:
                failed.append((item, e))
        return failed


def _resize_to(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    import cv2

    return a if a.shape == hw else cv2.resize(a, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
