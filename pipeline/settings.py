"""Settings read from luigi.cfg: where things live and per-benchmark presets.

Luigi task parameters cover what identifies an output; everything a user configures per machine
(dataset roots, weight files, the workdir) or per benchmark (the paper's presets) lives here so that
luigi.cfg stays the one place to look. Section names: [paths], [benchmark.<NAME>].
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import luigi
from luigi.configuration import LuigiConfigParser, get_config

# The repository's luigi.cfg documents every default; it is read first, so running luigi from any directory
# (or with only $LUIGI_CONFIG_PATH) still gets them, and ./luigi.cfg or $LUIGI_CONFIG_PATH override it.
DEFAULTS_FILE = str(Path(__file__).resolve().parents[1] / "luigi.cfg")


def _install_default_config() -> None:
    paths = LuigiConfigParser._config_paths
    if DEFAULTS_FILE not in paths:
        paths.insert(0, DEFAULTS_FILE)
        if LuigiConfigParser._instance is not None:
            LuigiConfigParser.reload()


_install_default_config()


class paths(luigi.Config):
    """[paths] in luigi.cfg."""

    workdir = luigi.Parameter(default="work", description="root of every stage's outputs")


def workdir() -> Path:
    return Path(os.path.expanduser(paths().workdir)).resolve()


def benchmark_setting(benchmark: str, key: str, default=None, cast=str):
    """Value of `key` in [benchmark.<benchmark>] of luigi.cfg, else `default`. Empty values count as unset."""
    cfg = get_config()
    section = f"benchmark.{benchmark}"
    if cfg.has_option(section, key):
        raw = cfg.get(section, key).strip()
        if raw != "":
            return cast(raw) if cast is not bool else raw.lower() in ("1", "true", "yes", "on")
    return default


def require_path(benchmark: str, key: str, what: str) -> Path:
    """A configured file or folder that must exist; the error says which config key to set."""
    value = benchmark_setting(benchmark, key)
    if not value:
        raise RuntimeError(f"{what} is not configured: set `{key}` in section [benchmark.{benchmark}] of luigi.cfg "
                           f"(or LUIGI_CONFIG_PATH)")
    p = Path(os.path.expanduser(value))
    if not p.exists():
        raise RuntimeError(f"{what} not found at {p} (configured as `{key}` in [benchmark.{benchmark}] of luigi.cfg)")
    return p


def is_generated_syn(benchmark: str) -> bool:
    """`SYN`, or a benchmark whose section says `generator = syn` (rendered by GenerateSyn, SYN's classes)."""
    return benchmark == "SYN" or benchmark_setting(benchmark, "generator", "") == "syn"


def resolve_benchmark(name: str):
    """The registered benchmark `name`, or one defined in luigi.cfg: a section [benchmark.<name>] with
    `classes = a,b,c` (label order) and optionally `source_dataset` / `target_dataset` (default `folder`:
    root/<class>/<file>) lets users bring their own data without writing code."""
    from data.benchmarks import Benchmark, get_benchmark, register_benchmark

    try:
        return get_benchmark(name)
    except KeyError:
        if is_generated_syn(name):
            from data.syn import syn_benchmark

            return register_benchmark(dataclasses.replace(syn_benchmark(), name=name))
        classes = benchmark_setting(name, "classes")
        if not classes:
            raise KeyError(f"unknown benchmark {name!r}: use SYN, E2H, S2U, B2U, or define [benchmark.{name}] "
                           f"with `classes = ...` in luigi.cfg") from None
        return register_benchmark(Benchmark(
            name=name, classes=[c.strip() for c in classes.split(",") if c.strip()],
            source_dataset=benchmark_setting(name, "source_dataset", "folder"),
            target_dataset=benchmark_setting(name, "target_dataset", "folder"),
            note="defined in luigi.cfg"))
