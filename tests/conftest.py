"""Shared test helpers: where the real third-party data lives, and a rule for when it is missing."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata"


def require(path: Path, what: str = "real test data") -> Path:
    """`path` if it exists, else skip (fail under CI, where a missing ../shared is a defect)."""
    if not path.exists():
        message = f"{what} not found at {path}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def require_cuda(what: str) -> None:
    """Skip a GPU test where no CUDA device is present (the documented GPU skips: CI has no GPU). Anything
    else such a test needs (triton, ...) is imported after this call, so that on a CUDA machine it fails."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip(f"GPU test, no CUDA device here: {what}")


def require_realdata() -> Path:
    """../shared/realdata (see `require`)."""
    return require(REALDATA)


@pytest.fixture
def realdata() -> Path:
    return require_realdata()


def manifest_frame_counts(realdata: Path) -> dict[str, int]:
    """file name -> frame count, from the table in realdata/MANIFEST.md."""
    counts = {}
    for line in (realdata / "MANIFEST.md").read_text(encoding="utf-8").splitlines():
        m = re.match(r"\|\s*(\S+\.(?:mp4|avi))\s*\|[^|]*\|\s*(\d+)\s*\|", line)
        if m:
            counts[m.group(1)] = int(m.group(2))
    return counts
