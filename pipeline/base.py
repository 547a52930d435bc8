"""The stage framework: one base class owns output naming, atomic writes, completeness, sharding, reports
and progress, so each stage is a few lines (gokart-style).

Output location: <workdir>/<Stage>/<benchmark>/<key>/ where <key> is a short hash of the parameters that
change the bytes, the stage's format version and the keys of the stages it reads. Changing any of them
makes a new folder; nothing is overwritten.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import luigi

from data import store
from data.atomic import atomic_write_text
from data.errors import BadInputError
from data.items import read_items, shard_slice
from data.progress import progress_bar
from pipeline.settings import benchmark_setting, workdir

STAGE_FORMAT_VERSION = 1
# Fault injection for tests: with this variable set to N, a shard's process SIGKILLs itself as soon as N items
# are written, a crash at a known point mid-shard (a kill timed from outside would race the writer).
KILL_AFTER_ITEMS_ENV = "CFB_I2V_KILL_AFTER_ITEMS"


def short_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


# Errors that are not a bad item (a full disk, no memory, an interrupt, a damaged upstream file, which would
# otherwise drop its items from this shard for good): the shard stops, nothing is kept.
FATAL_ERRORS = (KeyboardInterrupt, SystemExit, MemoryError, store.StoreWriteError, store.DamagedItemError)


def write_json_atomic(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str))


def remove_stale_temporaries(folder: Path, names: tuple[str, ...]) -> None:
    """Remove temporary files (or folders) left by killed writers of `names` (their process no longer
    exists). Only these names' temporaries (a shard's own), since the workdir may be shared by workers on
    other machines, whose process ids mean nothing here."""
    if not folder.is_dir():
        return
    for p in (p for name in names for p in folder.glob(f".{name}.tmp-*")):
        m = re.search(r"\.tmp-(\d+)-", p.name)
        if m and not _pid_alive(int(m.group(1))):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CompleteH5Target(luigi.LocalTarget):
    """Exists only when the HDF5 file is readable and carries complete = 1 (written last)."""

    def exists(self) -> bool:
        return store.is_complete(self.path)


class Stage(luigi.Task):
    """Base of every stage. Subclasses list their byte-changing parameters in `key_params`."""

    benchmark = luigi.Parameter(default="SYN", description="benchmark name: SYN, E2H, S2U, B2U")
    key_params: tuple[str, ...] = ()
    format_version = STAGE_FORMAT_VERSION

    @property
    def stage_name(self) -> str:
        return type(self).__name__

    def key_material(self) -> dict:
        """Everything that decides the bytes of the output: own parameters, format, upstream keys."""
        own = {name: getattr(self, name) for name in self.key_params}
        upstream = sorted({t.output_key() for t in luigi.task.flatten(self.requires()) if isinstance(t, Stage)})
        return {"stage": self.stage_name, "format": self.format_version, "store_format": store.FORMAT_VERSION,
                "benchmark": self.benchmark, "params": own, "upstream": upstream}

    def output_key(self) -> str:
        # Not cached: Luigi reuses task instances, and the key must follow luigi.cfg if it changes.
        return short_hash(self.key_material())

    def output_dir(self) -> Path:
        return workdir() / self.stage_name / self.benchmark / self.output_key()

    def write_params_file(self) -> None:
        """params.json beside the outputs: what produced this folder, readable by people."""
        path = self.output_dir() / "params.json"
        if not path.exists():
            write_json_atomic(path, self.key_material())

    def progress(self, done: int, total: int, message: str = "") -> None:
        """Report progress to the Luigi scheduler (visible in the luigid page)."""
        try:
            self.set_progress_percentage(round(100.0 * done / max(total, 1), 1))
            if message:
                self.set_status_message(message)
        except Exception:  # the local scheduler without a worker may not support it: progress is optional
            pass


class ShardedStage(Stage):
    """A stage over one fixed slice of the sorted item list, written to one HDF5 file per shard."""

    shard = luigi.IntParameter(default=0, description="which slice of the sorted item list")
    num_shards = luigi.IntParameter(default=0, description="slices of the item list; 0 = from luigi.cfg "
                                    "[benchmark.<name>] source_shards / target_shards")
    domain = "source"  # which shard-count setting applies; ExtractFlow makes it a parameter

    @property
    def n_shards(self) -> int:
        if self.num_shards > 0:
            return self.num_shards
        return benchmark_setting(self.benchmark, f"{self.domain}_shards", 1, int)

    def key_material(self) -> dict:
        # The shard count changes which items land in which file, so it belongs to the key; the shard
        # index does not (all shards of one configuration share one folder). Upstream keys of a sharded
        # stage are those of the same shard index, equal for all shards.
        material = super().key_material()
        material["num_shards"] = self.n_shards
        return material

    def shard_file(self) -> Path:
        return self.output_dir() / f"shard-{self.shard:04d}-of-{self.n_shards:04d}.h5"

    def report_file(self) -> Path:
        return self.output_dir() / f"shard-{self.shard:04d}-of-{self.n_shards:04d}.report.json"

    def output(self):
        return CompleteH5Target(str(self.shard_file()))

    def complete(self) -> bool:
        return self.output().exists()

    # --- what subclasses provide -------------------------------------------------------------------
    def items(self) -> list:
        """The items this shard should process (each with an `id`)."""
        raise NotImplementedError

    def process_item(self, item, writer: store.ShardWriter) -> None:
        """Compute and `writer.add(...)` one item; raise to have it skipped and reported."""
        raise NotImplementedError

    items_per_call = 1  # stages that batch (GPU depth, process-pool flow) take several items per call

    def process_items(self, items: list, writer: store.ShardWriter) -> list:
        """Process a chunk of items; return [(item, exception)] for those that failed."""
        failed = []
        for item in items:
            try:
                self.process_item(item, writer)
            except FATAL_ERRORS:
                raise
            except Exception as e:  # one bad item must not cost the shard
                failed.append((item, e))
        return failed

    def shard_params(self) -> dict:
        """Parameters recorded in the HDF5 root attributes."""
        return {name: getattr(self, name) for name in self.key_params}

    def extra_attrs(self) -> dict:
        return {}

    def before_items(self) -> None:
        """Load models etc. once per shard."""

    # --- the common run -------------------------------------------------------------------------------
    def run(self) -> None:
        if self.shard < 0 or self.shard >= self.n_shards:
            raise ValueError(f"shard {self.shard} is outside 0..{self.n_shards - 1}")
        remove_stale_temporaries(self.output_dir(), (self.shard_file().name, self.report_file().name))
        self.write_params_file()
        items = self.items()
        self.before_items()
        skipped, not_bad_input, started = [], [], time.time()
        desc = f"{self.stage_name}[{self.benchmark}] shard {self.shard + 1}/{self.n_shards}"
        with store.ShardWriter(self.shard_file(), stage=self.stage_name, benchmark=self.benchmark,
                               params=self.shard_params(), extra_attrs=self.extra_attrs()) as writer:
            bar = progress_bar(len(items), desc)
            for start in range(0, len(items), self.items_per_call):
                chunk = items[start:start + self.items_per_call]
                for item, error in self.process_items(chunk, writer):
                    skipped.append({"id": _item_id(item), "path": getattr(item, "path", ""),
                                    "reason": f"{type(error).__name__}: {error}"})
                    bar.write(f"{desc}: skipped {_item_id(item)}: {error}")
                    if not isinstance(error, BadInputError):
                        not_bad_input.append(skipped[-1])
                bar.update(len(chunk))
                if os.environ.get(KILL_AFTER_ITEMS_ENV) and len(writer) >= int(os.environ[KILL_AFTER_ITEMS_ENV]):
                    os.kill(os.getpid(), signal.SIGKILL)
                self.progress(bar.n, len(items), f"{bar.n}/{len(items)} items, {len(skipped)} skipped")
            bar.close()
            written = len(writer)
            if items and not written and not_bad_input:
                # Every item failed, and not (only) for bad input: the environment is broken (a worker pool
                # that cannot start, a GPU out of memory ...). An empty shard would look complete forever.
                raise RuntimeError(f"{desc}: all {len(items)} items failed, {len(not_bad_input)} of them for a "
                                   f"reason other than bad input, e.g. {not_bad_input[0]['id']}: "
                                   f"{not_bad_input[0]['reason']}; nothing was written (fix the cause and rerun)")
        write_json_atomic(self.report_file(), {
            "stage": self.stage_name, "benchmark": self.benchmark, "shard": self.shard,
            "num_shards": self.n_shards, "tried": len(items), "written": written,
            "skipped": skipped, "seconds": round(time.time() - started, 2)})


def _item_id(item) -> str:
    return item if isinstance(item, str) else getattr(item, "id", str(item))


def index_slice(index_file: Path, shard: int, num_shards: int):
    """This shard's items of an index file written by SourceIndex / TargetIndex."""
    items, _meta = read_items(index_file)
    return shard_slice(items, shard, num_shards)
