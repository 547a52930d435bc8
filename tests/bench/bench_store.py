"""Choose the store's frame and flow encodings by measurement on the real clips.

Budget at short side 256: <= 25 KB per RGB frame, <= 12 KB per flow frame, >= 500 decoded frames/s on one
core. Flows are TV-L1 (OpenCV defaults) on a few consecutive pairs per clip.

    python -m tests.bench.bench_store [--pairs 3] [--realdata ../shared/realdata]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from data import codec
from data.store import ShardWriter, StoreReader
from data.video import decode_video

REALDATA = Path(__file__).resolve().parents[2].parent / "shared" / "realdata"


def tvl1_pairs(frames: np.ndarray, pairs: int) -> list[np.ndarray]:
    tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames[: pairs + 1]]
    return [np.clip(tvl1.calc(a, b, None), -20, 20) for a, b in zip(gray[:-1], gray[1:])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--realdata", type=Path, default=REALDATA)
    ap.add_argument("--pairs", type=int, default=3, help="TV-L1 pairs per clip for the flow figures")
    ap.add_argument("--short-side", type=int, default=256)
    ap.add_argument("--clips", type=int, default=100, help="random clips read for the clip-read figure")
    args = ap.parse_args()
    cv2.setNumThreads(1)

    videos = sorted((args.realdata / "videos").iterdir())
    frames = [decode_video(v, args.short_side) for v in videos]
    all_frames = [f for clip in frames for f in clip]
    flows = [fl for clip in frames for fl in tvl1_pairs(clip, args.pairs)]
    print(f"{len(videos)} clips, {len(all_frames)} frames, {len(flows)} TV-L1 flows at short side {args.short_side}")

    print("\nRGB frames   encoding   KB/frame   decode frames/s (1 core)   PSNR dB")
    for enc, kb, rate, dec in codec_rows(all_frames, codec.FRAME_ENCODINGS, codec.encode_frame, codec.decode_frame):
        mse = np.mean([np.mean((a.astype(np.float32) - b) ** 2) for a, b in zip(all_frames, dec)])
        psnr = f"{10 * np.log10(255 ** 2 / mse):6.1f}" if mse > 0 else "lossless"
        print(f"             {enc:9s}  {kb:8.1f}   {rate:10.0f}                 {psnr}")

    print("\nflow frames  encoding   KB/flow    decode flows/s (1 core)    mean EPE vs float (px)")
    for enc, kb, rate, dec in codec_rows(flows, codec.FLOW_ENCODINGS, codec.encode_flow, codec.decode_flow):
        epe = np.mean([np.linalg.norm(a - b, axis=-1).mean() for a, b in zip(flows, dec)])
        print(f"             {enc:9s}  {kb:8.1f}   {rate:10.0f}                 {epe:8.3f}")
    print(f"\nstore defaults: frames {codec.DEFAULT_FRAME_ENCODING}, flows {codec.DEFAULT_FLOW_ENCODING}")
    clip_reads(videos, frames, args.clips)


def codec_rows(items, encodings, encode, decode):
    """Per encoding: (name, mean KB per item, items decoded per second on one core, decoded items)."""
    for enc in encodings:
        bufs = [encode(x, enc) for x in items]
        t = time.perf_counter()
        dec = [decode(b) for b in bufs]
        rate = len(bufs) / (time.perf_counter() - t)
        yield enc, np.mean([len(b) for b in bufs]) / 1000, rate, dec


def clip_reads(videos, frames, n_clips: int) -> None:
    """Random 16-frame training clips: from the store vs decoding the source video up to the clip."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store.h5"
        with ShardWriter(path, stage="bench", benchmark="realdata", params={}) as w:
            for v, clip in zip(videos, frames):
                w.add(v.name, frames=clip)
        reader = StoreReader(path)
        picks = [(int(k), int(rng.integers(0, len(frames[k]) - 16))) for k in rng.integers(0, len(videos), n_clips)]
        t = time.perf_counter()
        for k, start in picks:
            reader.read_frames(videos[k].name, range(start, start + 16))
        store_rate = n_clips / (time.perf_counter() - t)
        t = time.perf_counter()
        for k, start in picks:
            cap = cv2.VideoCapture(str(videos[k]))
            for _ in range(start + 16):
                cap.read()
            cap.release()
        video_rate = n_clips / (time.perf_counter() - t)
    print(f"\nrandom 16-frame clips (1 core): store {store_rate:.1f} clips/s, decoding the video file "
          f"{video_rate:.1f} clips/s -> {store_rate / video_rate:.1f}x")


if __name__ == "__main__":
    main()
