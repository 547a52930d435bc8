"""Which byte flips the store's checksums detect: every byte of a small store file is flipped in turn (all
eight bits, x ^ 0xFF, and the lowest bit, x ^ 0x01) and the file is checked with data.store.check_payload.

Each flip is classed as
    detected   check_payload reports a problem (or the file is no longer a complete store file);
    harmless   nothing reported, and every dataset element and attribute reads back exactly as written
               (the byte was unused space or a field HDF5 does not need to read the file);
    crashed    HDF5 itself crashed (segfault) reading the damaged metadata: why checks run in a child process;
    MISSED     nothing reported, but something reads back differently: must be zero.
and by where it lies: payload (the bytes of encoded frames and flows in the global heap, and the chunks of
fixed-size arrays) or HDF5 metadata (everything else).

The read cost of the checks: random 16-frame clips (256x340 JPEG frames) read with StoreReader.read_frames
(CRC-32 of each frame read) against the same reads without the check, in the same process:

    python -m tests.bench.bench_checksums [--out docs/integrity_flips.json] [--read-cost-only]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from data import store


def write_sample(path: Path) -> None:
    """Two items as the stages write them: frames + inverse depth + attributes, and flows."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:24, 0:32]
    frames = np.stack([np.stack([x * 7 + i, y * 9, (x + y) * 3 + i], -1) for i in range(3)]).clip(0, 255)
    frames = frames.astype(np.uint8)
    flow = rng.normal(0, 3, (2, 24, 32, 2)).astype(np.float32)
    with store.ShardWriter(path, stage="Sample", benchmark="SYN", params={"a": 1}) as w:
        w.add("walk/a.png", label=1, source_path="/data/walk/a.png", frames=frames,
              arrays={"inverse_depth": rng.random((24, 32)).astype(np.float16)},
              attrs={"class_name": "walk", "inverse_depth_min": 0.25})
        w.add("run/b.avi", label=0, source_path="/data/run/b.avi", flow=flow, attrs={"num_frames": 3})


def content(path: Path):
    """Every element and attribute of the file as bytes (None if the file cannot be read whole)."""
    out = {}
    try:
        with h5py.File(path, "r") as f:
            def visit(name, obj):
                out[name + "@attrs"] = {k: store._value_bytes(v) for k, v in obj.attrs.items()}
                if isinstance(obj, h5py.Dataset):
                    value = obj[()]
                    out[name] = ([store._crc(v) for v in value] if obj.dtype.kind == "O"
                                 else (obj.dtype.str, obj.shape, value.tobytes()))
            out["/@attrs"] = {k: store._value_bytes(v) for k, v in f.attrs.items()}
            f.visititems(visit)
    except Exception:  # noqa: BLE001
        return None
    return out


def payload_ranges(path: Path) -> list[tuple[int, int]]:
    """Byte ranges of the payload: encoded frames/flows (found in the file) and fixed-size chunks."""
    raw = path.read_bytes()
    ranges = []
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if not isinstance(obj, h5py.Dataset):
                return
            if obj.dtype.kind == "O" and obj.shape:
                for v in obj[()]:  # every place the bytes occur (an id also occurs inside its source path)
                    b = v if isinstance(v, bytes) else np.asarray(v).tobytes()
                    at = raw.find(b)
                    assert at >= 0, name
                    while at >= 0:
                        ranges.append((at, at + len(b)))
                        at = raw.find(b, at + 1)
            elif obj.chunks:
                for i in range(obj.id.get_num_chunks()):
                    info = obj.id.get_chunk_info(i)
                    ranges.append((info.byte_offset, info.byte_offset + info.size))
        f.visititems(visit)
    return ranges


def _classify(work: Path, reference) -> str:
    if store.check_payload(work, isolate=False):
        return "detected"
    return "harmless" if content(work) == reference else "MISSED"


def _worker(conn, work: Path, reference) -> None:
    while True:
        data = conn.recv()
        if data is None:
            return
        work.write_bytes(data)
        conn.send(_classify(work, reference))


def scan(path: Path, masks=(0xFF, 0x01)) -> dict:
    """Flip every byte; a persistent forked worker checks each flip, and a flip that kills it (HDF5 crashes
    on some damaged metadata) is counted as `crashed` and the worker restarted."""
    import multiprocessing

    raw = path.read_bytes()
    reference = content(path)
    payload = np.zeros(len(raw), bool)
    for a, b in payload_ranges(path):
        payload[a:b] = True
    work = path.with_name("flipped.h5")
    ctx = multiprocessing.get_context("fork")
    verdicts = ("detected", "harmless", "crashed", "MISSED")
    counts = {where: dict.fromkeys(verdicts, 0) for where in ("payload", "metadata")}
    missed, crashed, proc, conn = [], [], None, None
    for offset in range(len(raw)):
        for mask in masks:
            if proc is None:
                conn, child = ctx.Pipe()
                proc = ctx.Process(target=_worker, args=(child, work, reference), daemon=True)
                proc.start()
                child.close()  # else the parent holds the pipe open and never sees the worker die
            data = bytearray(raw)
            data[offset] ^= mask
            conn.send(bytes(data))
            try:
                verdict = conn.recv()
            except EOFError:
                proc.join()
                verdict, proc = "crashed", None
                crashed.append({"offset": offset, "mask": mask})
            if verdict == "MISSED":
                missed.append({"offset": offset, "mask": mask})
            counts["payload" if payload[offset] else "metadata"][verdict] += 1
    if proc is not None:
        conn.send(None)
        proc.join()
    return {"file_bytes": len(raw), "payload_bytes": int(payload.sum()), "masks": [hex(m) for m in masks],
            "flips": counts, "missed": missed[:50], "crashed_at": crashed[:50]}


def read_cost(folder: Path, items: int = 8, clips: int = 200, repeats: int = 3) -> dict:
    """Seconds per 16-frame clip read with the checks and without (the same h5py reads and decoding)."""
    from data import codec

    rng = np.random.default_rng(0)
    path = folder / "video.h5"
    y, x = np.mgrid[0:256, 0:340]
    with store.ShardWriter(path, stage="Sample", benchmark="SYN", params={}) as w:
        for i in range(items):
            base = np.stack([x * 0.7 + i * 9, y * 0.9, (x + y) * 0.3], -1) + rng.normal(0, 8, (256, 340, 3))
            w.add(f"v{i}", frames=np.stack([np.roll(base, 3 * t, 1) for t in range(32)]).clip(0, 255).astype(np.uint8))
    reader = store.StoreReader(path)
    picks = [(f"v{rng.integers(items)}", int(rng.integers(0, 17))) for _ in range(clips)]

    def checked():
        for item_id, start in picks:
            reader.read_frames(item_id, range(start, start + 16))

    def unchecked():
        for item_id, start in picks:
            ds = reader._group(item_id)["frames"]
            np.stack([codec.decode_frame(ds[i]) for i in range(start, start + 16)])

    best = {}
    for name, fn in (("checked", checked), ("unchecked", unchecked)) * repeats:
        t = time.perf_counter()
        fn()
        best[name] = min(best.get(name, 1e9), (time.perf_counter() - t) / clips)
    return {"clip_s_checked": round(best["checked"], 6), "clip_s_unchecked": round(best["unchecked"], 6),
            "ratio": round(best["checked"] / best["unchecked"], 3), "clips": clips, "frames_per_clip": 16,
            "frame_size": "256x340 JPEG"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="", help="write the result as JSON here too")
    parser.add_argument("--read-cost-only", action="store_true", help="skip the byte-flip scan")
    args = parser.parse_args(argv)
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sample.h5"
        write_sample(path)
        started = time.time()
        if not args.read_cost_only:
            result = scan(path)
            result["seconds"] = round(time.time() - started, 1)
        result["read_cost"] = read_cost(Path(tmp))
    result["versions"] = store.library_versions()
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 1 if any(c["MISSED"] for c in result.get("flips", {}).values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
