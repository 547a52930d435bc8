"""Which stages a bundle may carry, and the key material that names their folders.

The registry is explicit: a stage is shareable because it is listed here, not because it happens to be a
ShardedStage visible in `pipeline` (tests/test_share_registry.py checks that no sharded stage is missing).
Index stages are left out on purpose: items.json holds this machine's absolute paths, and the stages
downstream of the HDF5 stores read ids and labels from the stores, not from the index.
"""
from __future__ import annotations

import json

import luigi

from pipeline.base import Stage, short_hash
from pipeline.decode import DecodeTargetVideos
from pipeline.depth import EstimateDepth
from pipeline.flow import ExtractFlow
from pipeline.synthesis import SynthesizeSourceVideos

SHAREABLE_STAGES = {cls.__name__: cls for cls in
                    (EstimateDepth, SynthesizeSourceVideos, DecodeTargetVideos, ExtractFlow)}


def canonical(obj):
    """The JSON form of an object, as params.json and short_hash see it."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def material_and_key(task: Stage) -> tuple[dict, str]:
    """A stage's key material in its JSON form, and the folder key it gives (``Stage.output_key``)."""
    material = canonical(task.key_material())
    return material, short_hash(material)


def upstream_chain(task) -> list[dict]:
    """Key material of every stage `task` is computed from (breadth-first, each once)."""
    chain, seen, todo = [], set(), list(luigi.task.flatten(task.requires()))
    while todo:
        t = todo.pop(0)
        if not isinstance(t, Stage):
            continue
        material, key = material_and_key(t)
        if (t.stage_name, key) in seen:
            continue
        seen.add((t.stage_name, key))
        chain.append({"stage": t.stage_name, "benchmark": t.benchmark, "key": key, "key_material": material})
        todo.extend(luigi.task.flatten(t.requires()))
    return chain


def _flatten(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def differences(bundle_material: dict, here_material: dict, ignore=("upstream",)) -> list[str]:
    """`name: bundle X, this configuration Y` for every leaf value that differs."""
    a, b = _flatten(bundle_material), _flatten(here_material)
    out = []
    for k in sorted(set(a) | set(b)):
        if k.split(".")[0] in ignore:
            continue
        if a.get(k, "<unset>") != b.get(k, "<unset>"):
            out.append(f"{k}: bundle {json.dumps(a.get(k, '<unset>'))}, this configuration "
                       f"{json.dumps(b.get(k, '<unset>'))}")
    return out


def task_for_folder(cls, benchmark: str, params: dict, shard: int = 0):
    """The task the current luigi.cfg makes for a folder's stage (parameters that are Luigi parameters of
    the stage, such as ExtractFlow's domain, come from the recorded key material; the rest from luigi.cfg)."""
    kwargs = {name: params[name] for name in cls.get_param_names()
              if name in params and name not in ("benchmark", "shard", "num_shards")}
    return cls(benchmark=benchmark, shard=shard, **kwargs)
