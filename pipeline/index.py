"""Index stages: the item lists (ids, paths, labels) of a benchmark's source images and target videos,
and the generation of the embedded SYN dataset they read from."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import luigi

from data import syn
from data.benchmarks import list_source_items, list_target_items
from data.items import read_items, write_items
from pipeline.base import Stage, short_hash, write_json_atomic
from pipeline.settings import benchmark_setting, is_generated_syn, require_path, resolve_benchmark


@functools.lru_cache(maxsize=None)
def dataset_fingerprint(root: str) -> str:
    """Hash of the relative paths and sizes of every file under `root` (not following symlinked folders)."""
    entries = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            try:
                size = os.stat(path).st_size
            except OSError:
                size = -1  # broken link: listed, reported by the adapter
            entries.append(f"{os.path.relpath(path, root)}\t{size}")
    return short_hash(entries)


@functools.lru_cache(maxsize=256)
def _listed_root(path: str, version: tuple) -> str | None:
    """The root an items.json was listed from (None when unreadable); cached per file version (mtime, inode
    and size: a rewrite is a rename, a new inode, even where timestamps are coarse) because the scheduler
    asks complete() many times and B2U's list has 13k rows."""
    try:
        _items, meta = read_items(path)
    except ValueError:
        return None
    return meta.get("root")


class GenerateSyn(Stage):
    """Render a SYN benchmark (stills, ground-truth depth, target videos) from its seed: `SYN`, or a
    section with `generator = syn` (such as the control `SYN_CONTROL`)."""

    seed = luigi.IntParameter(default=0, description="SYN's seed (its properties are fixed; see README)")
    key_params = ("seed", "scale")
    format_version = syn.SYN_FORMAT_VERSION

    @property
    def scale(self) -> dict:
        """SYN's size and variant (only its scale, seed and the control switch are configurable):
        [benchmark.<name>] stills_per_class, videos_per_class, frames_per_video, identical_pair_motion;
        empty = SynConfig's defaults."""
        fields = ("stills_per_class", "videos_per_class", "frames_per_video")
        scale = {f: v for f in fields if (v := benchmark_setting(self.benchmark, f, None, int)) is not None}
        if benchmark_setting(self.benchmark, "identical_pair_motion", False, bool):
            scale["identical_pair_motion"] = True
        return scale

    def syn_config(self) -> syn.SynConfig:
        return syn.SynConfig(seed=self.seed, **self.scale)

    def output(self):
        return luigi.LocalTarget(str(self.output_dir() / "dataset" / "syn.json"))

    def run(self) -> None:
        self.set_status_message("rendering SYN")
        syn.generate_syn(self.output_dir() / "dataset", self.syn_config())

    def dataset_root(self) -> Path:
        return self.output_dir() / "dataset"


class _Index(Stage):
    """Shared logic of SourceIndex and TargetIndex."""

    domain = "source"

    def requires(self):
        if is_generated_syn(self.benchmark):
            return GenerateSyn(benchmark=self.benchmark, seed=benchmark_setting(self.benchmark, "seed", 0, int))
        return []

    def dataset_root(self) -> Path:
        if is_generated_syn(self.benchmark):
            return self.requires().dataset_root()
        what = f"the {self.domain} dataset of {self.benchmark}"
        return require_path(self.benchmark, f"{self.domain}_root", what)

    def key_material(self) -> dict:
        material = super().key_material()
        if not is_generated_syn(self.benchmark):
            # What the dataset holds, not where it lives: the same dataset gives the same keys on every
            # machine, so shared bundles of downstream stages import anywhere.
            material["split"] = benchmark_setting(self.benchmark, f"{self.domain}_split", "")
            material["dataset"] = dataset_fingerprint(str(self.dataset_root()))
        return material

    def output(self):
        return luigi.LocalTarget(str(self.output_dir() / "items.json"))

    def complete(self) -> bool:
        """Done when items.json exists and was listed from the configured root (a moved dataset with the
        same contents is re-listed under the same key, so the item paths point to where the files are)."""
        path = self.output().path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False
        return _listed_root(path, (st.st_mtime_ns, st.st_ino, st.st_size)) == str(self.dataset_root())

    def run(self) -> None:
        benchmark = resolve_benchmark(self.benchmark)
        lister = list_source_items if self.domain == "source" else list_target_items
        split = benchmark_setting(self.benchmark, f"{self.domain}_split", None)
        kwargs = {"split": split} if split else {}
        items, skipped = lister(benchmark, self.dataset_root(), **kwargs)
        if not items:
            raise RuntimeError(f"no {self.domain} items found for {self.benchmark} under {self.dataset_root()}; "
                               f"{len(skipped)} files skipped (see the report) -- check the dataset layout")
        self.write_params_file()
        write_json_atomic(self.output_dir() / "report.json", {
            "stage": self.stage_name, "benchmark": self.benchmark, "root": str(self.dataset_root()),
            "items": len(items), "skipped": skipped,
            "per_class": {c: sum(1 for i in items if i.class_name == c) for c in benchmark.classes}})
        write_items(self.output().path, items, meta={"benchmark": self.benchmark, "domain": self.domain,
                                                     "root": str(self.dataset_root()),
                                                     "classes": list(benchmark.classes)})

    def index_file(self) -> Path:
        return Path(self.output().path)


class SourceIndex(_Index):
    """Labelled still images of the benchmark's source dataset -> items.json."""

    domain = "source"


class TargetIndex(_Index):
    """Videos of the benchmark's target dataset (labels kept for evaluation only) -> items.json."""

    domain = "target"
