"""Which torch device a stage uses. Never initialises CUDA at import or scheduling time: Luigi forks
worker processes, and CUDA cannot be used in a child forked after initialisation."""
from __future__ import annotations

from pipeline.settings import benchmark_setting


def stage_device(benchmark: str) -> str:
    """`device` in [benchmark.<name>] of luigi.cfg: auto (CUDA when present), cpu or cuda[:N]."""
    want = benchmark_setting(benchmark, "device", "auto")
    if want != "auto":
        return want
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def gpu_resources(benchmark: str) -> dict:
    """Luigi resources of a GPU stage: one `gpu` unit when the stage runs on CUDA."""
    return {"gpu": 1} if benchmark_setting(benchmark, "device", "auto") != "cpu" else {}
