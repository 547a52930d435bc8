"""Bad-input suite: a user-defined folder benchmark holding many kinds of bad input, next to awkward but good
input, run through index, decoding, depth (random MiDaS, explicitly opted in) and synthesis.

Every input is accounted for: it is either processed (its id is in the last store of its domain) or rejected
with a message that names it (in the index report or a shard report). No good input may be lost, and the run
itself must succeed. The figures (kinds, inputs tried, rejected, processed, lost) are printed (pytest -s) and
quoted in docs/reliability.md.
"""
from __future__ import annotations

import json
import os
import struct
import unicodedata
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from data.store import StoreReader
from tests.pipeline_helpers import build, reset_config, use_config

CONFIG = """
[paths]
workdir = {workdir}

[benchmark.BAD]
classes = a,b,c
source_root = {root}/source
target_root = {root}/target
device = cpu
frame_short_side = 64
source_shards = 1
target_shards = 1
depth_source = random
depth_model = dpt_swin2_tiny_256
source_num_frames = 8
"""

VIDEO_FRAMES = 12


@dataclass
class Case:
    kind: str
    domain: str            # source (images) or target (videos)
    path: str              # absolute path as the OS returns it (str, surrogate-escaped when not UTF-8)
    good: bool             # must be processed (True) or rejected with a message (False)
    frames: tuple = ()     # for good videos: (min, max) frame count expected in the store


# --- making inputs -------------------------------------------------------------------------------------------

def _picture(h=72, w=96, seed=0) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    base = np.stack([x * 255 // w, y * 255 // h, (x + y) * 127 // (h + w)], -1)
    return (base + rng.integers(0, 40, (h, w, 3))).clip(0, 255).astype(np.uint8)


def _huge_png(path: Path, w: int, h: int) -> None:
    """A valid 1-bit PNG of w x h pixels, written by hand in well under a second (Pillow takes seconds)."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    row = b"\x00" + bytes((w + 7) // 8)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row * 1000) for _ in range(h // 1000)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def _video(path: Path, n: int, fourcc: str = "MJPG", color: bool = True, size=(64, 48)) -> None:
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, size, color)
    assert vw.isOpened(), path
    for i in range(n):
        f = _picture(size[1], size[0], seed=i)
        f[:, (i * 5) % size[0]] = 255  # something moves
        vw.write(f if color else f[..., 0])
    vw.release()


def make_dataset(root: Path) -> list[Case]:
    src, tgt = root / "source", root / "target"
    a, b = src / "a", src / "b"
    scratch = root.parent / "scratch"  # files made here and copied in, so the dataset holds only the inputs
    scratch.mkdir()
    for d in (a, b, src / "c", tgt / "a", tgt / "c"):  # source c: empty class folder; target b: missing class
        d.mkdir(parents=True)
    cases: list[Case] = []

    def img(kind, path, good=True):
        cases.append(Case(kind, "source", str(path), good))
        return path

    def vid(kind, path, good=True, frames=()):
        cases.append(Case(kind, "target", str(path), good, frames))
        return path

    rgb = _picture()
    # -- images that are awkward but good: they must be processed ---------------------------------------------
    Image.fromarray(rgb).save(img("RGB JPEG (control)", a / "rgb.jpg"), quality=90)
    Image.fromarray(rgb).convert("L").save(img("grayscale PNG", a / "gray.png"))
    Image.fromarray(rgb).convert("CMYK").save(img("CMYK JPEG", a / "cmyk.jpg"), quality=90)
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(img("16-bit grayscale PNG", a / "sixteen.png"))
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(img("palette PNG", b / "palette.png"))
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(
        img("palette PNG with transparency", b / "palette_transparent.png"), transparency=0)
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])).save(img("RGBA PNG", b / "rgba.png"))
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees on display
    Image.fromarray(rgb).save(img("EXIF-rotated JPEG", b / "exif_rotated.jpg"), exif=exif)
    Image.fromarray(rgb[:2, :2]).save(img("2x2 image (smallest accepted)", b / "tiny2x2.png"))
    Image.fromarray(rgb).save(img("PNG content with a .jpg extension", a / "png_inside.jpg"), format="PNG")
    Image.fromarray(rgb).save(img("unicode name", b / "ñandú 日本 Ünïcödé.jpg"))
    Image.fromarray(rgb).save(img("shell-hostile name", a / "$(touch pwned); rm -rf ~ `id` 'q' \"d\" & | *.jpg"))
    Image.fromarray(rgb).save(img("newline in the name", a / "two\nlines.png"))
    Image.fromarray(rgb).save(img("name starting with a dash", a / "-rf --help.jpg"))

    # -- bad images: rejected with a message -----------------------------------------------------------------
    img("corrupt image (random bytes)", a / "corrupt.jpg", False).write_bytes(
        b"\xff\xd8\xff\xe0" + np.random.default_rng(1).bytes(3000))
    full = scratch / "full.jpg"
    Image.fromarray(_picture(120, 160, 3)).save(full, quality=95)
    img("truncated JPEG", a / "truncated.jpg", False).write_bytes(full.read_bytes()[: full.stat().st_size * 2 // 5])
    img("empty image file (0 bytes)", a / "empty.png", False).write_bytes(b"")
    Image.fromarray(rgb[:1, :1]).save(img("1x1 image", a / "one_pixel.png", False))
    _huge_png(img("20000x20000 image", a / "huge.png", False), 20000, 20000)
    img("text file with an image extension", b / "notes.png", False).write_text("not an image\n")
    # 64 px short side makes it 64 x 160000: too long a side for any stored frame (JPEG stops at 65500).
    Image.fromarray(np.tile(rgb[:2], (1, 53, 1))[:, :5000]).save(img("2x5000 sliver (extreme aspect ratio)",
                                                                       b / "sliver.png", False))
    img("unsupported extension (.txt)", a / "readme.txt", False).write_text("hello\n")
    Image.fromarray(rgb).save(img("unsupported image format (.gif)", b / "anim.gif", False))
    os.symlink(".", img("symlink loop (folder -> itself)", a / "loop", False))
    os.symlink("self.jpg", img("symlink loop (file -> itself)", a / "self.jpg", False))
    os.symlink("does-not-exist.jpg", img("dangling symlink", a / "dangling.jpg", False))
    Image.fromarray(rgb).save(img("hidden file", a / ".hidden.jpg", False))
    bad_name = os.fsencode(a) + b"/latin1-\xe9t\xe9.jpg"  # not valid UTF-8
    Image.fromarray(rgb).save(open(bad_name, "wb"), format="JPEG")
    cases.append(Case("file name not valid UTF-8", "source", os.fsdecode(bad_name), False))
    (a / "folder.jpg").mkdir()
    Image.fromarray(rgb).save((a / "folder.jpg" / "inner.jpg"))
    cases.append(Case("folder named like an image", "source", str(a / "folder.jpg"), False))
    Image.fromarray(rgb).save(img("file outside any class folder", src / "stray.jpg", False))
    (src / "zzz").mkdir()
    Image.fromarray(rgb).save(src / "zzz" / "x.jpg")
    cases.append(Case("class folder not in the benchmark", "source", str(src / "zzz"), False))
    cases.append(Case("empty class folder", "source", str(src / "c"), False))

    # -- videos that are awkward but good ---------------------------------------------------------------------
    n = VIDEO_FRAMES
    _video(vid("MJPG AVI (control)", tgt / "a" / "good.avi", frames=(n, n)), n)
    _video(vid("MPEG-4 MP4", tgt / "a" / "good.mp4", frames=(n, n)), n, fourcc="mp4v")
    _video(vid("grayscale video", tgt / "c" / "gray.avi", frames=(n, n)), n, color=False)
    _video(vid("unicode + shell-hostile video name", tgt / "c" / "ünï $(id) 'q' & ;.avi", frames=(n, n)), n)
    whole = scratch / "whole.avi"
    _video(whole, n)
    data = whole.read_bytes()
    vid("AVI content with a .mp4 extension", tgt / "c" / "avi_inside.mp4", frames=(n, n)).write_bytes(data)
    vid("video truncated mid-stream (decodable part kept)", tgt / "a" / "cut_late.avi",
        frames=(2, n - 1)).write_bytes(data[: len(data) * 9 // 10])
    # -- bad videos -------------------------------------------------------------------------------------------
    vid("video truncated inside its header", tgt / "a" / "cut_early.avi", False).write_bytes(data[:1024])
    vid("corrupt video (random bytes)", tgt / "a" / "corrupt.avi", False).write_bytes(
        b"RIFF" + np.random.default_rng(2).bytes(4000))
    vid("empty video file (0 bytes)", tgt / "a" / "empty.mp4", False).write_bytes(b"")
    _video(vid("zero-frame video", tgt / "a" / "zero_frames.avi", False), 0)
    _video(vid("one-frame video", tgt / "c" / "one_frame.avi", False), 1)
    vid("text file with a video extension", tgt / "c" / "notes.avi", False).write_text("not a video\n" * 20)
    Image.fromarray(rgb).save(vid("JPEG image with a video extension", tgt / "c" / "picture.avi", False),
                              format="JPEG")
    cases.append(Case("class present in the source, missing in the target", "target", str(tgt / "b"), False))
    return cases


# --- accounting ----------------------------------------------------------------------------------------------

def _printable(path: str) -> str:  # as data.datasets reports paths
    return path.encode("utf-8", "backslashreplace").decode("utf-8")


def _item_id(path: str, domain_root: Path) -> str:
    return unicodedata.normalize("NFC", os.path.relpath(path, domain_root).replace(os.sep, "/"))


@pytest.fixture
def bad_benchmark(tmp_path):
    root = tmp_path / "data"
    cases = make_dataset(root)
    use_config(tmp_path / "luigi.cfg", CONFIG.format(workdir=tmp_path / "work", root=root))
    yield root, cases
    reset_config()


def test_every_input_is_processed_or_rejected_with_a_message_and_no_good_one_is_lost(bad_benchmark):
    from pipeline import DecodeTargetVideos, EstimateDepth, SourceIndex, SynthesizeSourceVideos, TargetIndex

    root, cases = bad_benchmark
    synth, decode = SynthesizeSourceVideos(benchmark="BAD", shard=0), DecodeTargetVideos(benchmark="BAD", shard=0)
    assert build([synth, decode]), "the run failed: bad input must never stop a stage"

    # Where each input ended: processed (in the last store of its domain) or rejected (a report names it).
    stores = {"source": StoreReader(synth.shard_file()), "target": StoreReader(decode.shard_file())}
    rejected: dict[str, tuple[str, str]] = {}  # printable absolute path -> (stage, reason)
    for task in (SourceIndex(benchmark="BAD"), TargetIndex(benchmark="BAD")):
        for s in json.loads((task.output_dir() / "report.json").read_text())["skipped"]:
            rejected.setdefault(s["path"], (task.stage_name, s["reason"]))
    for task in (EstimateDepth(benchmark="BAD", shard=0), synth, decode):
        report = json.loads(task.report_file().read_text())
        for s in report["skipped"]:
            assert s["id"] and s["reason"].strip(), s  # every rejection names the item and says why
            rejected.setdefault(_printable(s["path"]), (task.stage_name, s["reason"]))

    outcome, reasons, problems = {}, {}, []
    for case in cases:
        domain_root = root / case.domain
        item_id = _item_id(case.path, domain_root)
        store = stores[case.domain]
        where = rejected.get(_printable(case.path))
        if item_id in store:
            outcome[case.path] = "processed"
            if not case.good:
                problems.append(f"bad input was processed: {case.kind} ({case.path!r})")
            elif case.domain == "target":
                lo, hi = case.frames
                n = store.num_frames(item_id)
                if not lo <= n <= hi:
                    problems.append(f"{case.kind}: {n} frames stored, expected {lo}..{hi}")
            frames = store.read_frames(item_id, [0])
            if frames.shape[-1] != 3 or min(frames.shape[1:3]) != 64:
                problems.append(f"{case.kind}: stored frame shape {frames.shape}")
        elif where is not None and where[1].strip():
            outcome[case.path] = f"rejected by {where[0]}"
            reasons[case.path] = where[1].replace(str(root), "<root>")
            if case.good:
                problems.append(f"good input LOST: {case.kind} ({case.path!r}) rejected by {where[0]}: {where[1]}")
        else:
            outcome[case.path] = "unaccounted"
            problems.append(f"input neither processed nor rejected with a message: {case.kind} ({case.path!r})")
    # The synthesised source videos have the configured length.
    for item_id in stores["source"].ids:
        assert stores["source"].num_frames(item_id) == 8

    kinds = {c.kind for c in cases}
    good = [c for c in cases if c.good]
    processed = sum(1 for c in cases if outcome[c.path] == "processed")
    rejected_n = sum(1 for c in cases if outcome[c.path].startswith("rejected"))
    lost = sum(1 for c in good if outcome[c.path] != "processed")
    by_stage = Counter(outcome[c.path].removeprefix("rejected by ") for c in cases
                       if outcome[c.path].startswith("rejected"))
    print(f"\nbad-input suite: {len(kinds)} kinds, {len(cases)} inputs tried "
          f"({len(good)} good, {len(cases) - len(good)} bad): {processed} processed, {rejected_n} rejected with "
          f"a message, {lost} good lost; rejected by stage: {dict(sorted(by_stage.items()))}")
    for c in cases:
        why = f": {reasons[c.path][:110]!r}" if c.path in reasons else ""
        print(f"  {'good' if c.good else 'bad ':4s} {c.domain:6s} {c.kind:50s} -> {outcome[c.path]}{why}")

    assert not problems, "\n".join(problems)
    assert len(kinds) >= 15 and lost == 0
    assert processed == len(good) and rejected_n == len(cases) - len(good)
