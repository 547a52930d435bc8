"""data.atomic: the one write-then-rename recipe of every writer (stores, checkpoints, reports, JSON)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from data.atomic import atomic_write, atomic_write_text, temporary_path_for
from pipeline.base import remove_stale_temporaries


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "sub" / "result.json"
    atomic_write_text(target, "old")
    assert target.read_text() == "old"

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("writer died")

    with pytest.raises(RuntimeError, match="writer died"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.json"]


def test_the_suffix_ends_the_temporary_name_for_writers_that_need_an_extension(tmp_path):
    target = tmp_path / "features.npz"
    seen = []

    def save(tmp):
        seen.append(tmp.name)
        np.savez_compressed(tmp, x=np.arange(3))  # numpy appends .npz unless the name ends with it

    atomic_write(target, save, suffix=".npz")
    assert seen[0].startswith(".features.npz.tmp-") and seen[0].endswith(".npz")
    assert np.load(target)["x"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.npz"]


def test_a_dead_writers_temporary_is_recognised_by_its_process_id(tmp_path):
    target = tmp_path / "checkpoint.pt"
    mine = temporary_path_for(target)
    mine.write_bytes(b"live")
    dead = tmp_path / mine.name.replace(f"-{os.getpid()}-", "-999999999-")
    dead.write_bytes(b"dead")
    remove_stale_temporaries(tmp_path, (target.name,))
    assert mine.exists() and not dead.exists()
