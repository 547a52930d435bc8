"""torch Datasets over the HDF5 stores: source training clips, target pace clips, evaluation clips.

Every dataset reads its index (ids, labels, frame counts) through ``data.store.StoreCollection``, which opens
each file only briefly for that; the HDF5 handles used for reading frames are opened lazily by the process
that reads (each DataLoader worker opens its own and keeps it), never inherited from the parent.

Randomness is keyed, not streamed: item ``key`` of epoch ``e`` draws from ``np.random.default_rng((seed,
stream, e, key))``. A clip therefore does not depend on the worker that loads it or on how many workers
there are, and a resumed run sees exactly the clips of an uninterrupted one. ``EpochSampler`` yields the
keys (shuffled, repeated past the end when more samples than items are needed, sharded for DDP).

Tensors: RGB 3 x T x H x W and flow 2 x T x H x W, both in [-1, 1] (RGB x / 255 * 2 - 1; flow v / 20, the
Kinetics I3D input convention).

Deviation from the released code (``datasets_latest.py``): it crops and flips RGB and flow independently and
does not negate the horizontal flow component when flipping. Here one sample's RGB and flow share the crop
and the flip, and a flip negates the x component, so the flow keeps describing the frames it comes with.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from data.samplers import pace_indices, training_clip_indices, uniform_indices
from data.store import StoreCollection

FLOW_BOUND = 20.0
_SOURCE_STREAM, _TARGET_STREAM = 1, 2


def _paths(paths) -> list:
    if paths is None:
        return []
    return [paths] if isinstance(paths, (str, bytes)) or hasattr(paths, "__fspath__") else list(paths)


def rgb_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 3 x T x H x W in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float()
    return x.div_(127.5).sub_(1.0)


def flow_to_tensor(flow: np.ndarray) -> torch.Tensor:
    """float32 (T, H, W, 2) pixels -> float32 2 x T x H x W, clipped to +-20 and divided by 20."""
    x = torch.from_numpy(np.ascontiguousarray(flow, dtype=np.float32)).permute(3, 0, 1, 2)
    return x.clamp(-FLOW_BOUND, FLOW_BOUND).div_(FLOW_BOUND)


def fit_short_side(x: torch.Tensor, size: int, is_flow: bool = False, resize: int | None = None) -> torch.Tensor:
    """Resize C x T x H x W bilinearly (antialiased when shrinking) so that the short side is ``resize``, or,
    when ``resize`` is None, at least ``size`` (upscaling only). Flow vectors are scaled with the image."""
    h, w = x.shape[-2:]
    target = resize if resize else max(size, min(h, w))
    if min(h, w) == target:
        return x
    scale = target / min(h, w)
    nh, nw = max(target, round(h * scale)), max(target, round(w * scale))
    out = F.interpolate(x.transpose(0, 1), size=(nh, nw), mode="bilinear", align_corners=False,
                        antialias=scale < 1).transpose(0, 1)
    if is_flow:
        out = out * torch.tensor([nw / w, nh / h], dtype=out.dtype).view(2, 1, 1, 1)
    return out.contiguous()


def stored_window(frames: np.ndarray, top: int, left: int, size: int, mirror: bool,
                  is_flow: bool = False) -> torch.Tensor:
    """The ``size`` square at (top, left) of stored frames (uint8 RGB or float32 flow, T x H x W x C), mirrored
    left-right when ``mirror``, as a C x T x S x S tensor with ``rgb_to_tensor`` / ``flow_to_tensor`` values
    (a mirrored flow has its x component negated). The same values as converting first and then cropping
    and flipping, since the conversion is per element; done on the window alone, in one strided copy, it
    costs a fraction of that (the training feed's main cost after JPEG decoding)."""
    window = torch.from_numpy(frames[:, top: top + size, left: left + size]).permute(3, 0, 1, 2)
    out = torch.empty(window.shape, dtype=torch.float32)
    out.copy_(window.flip(-1) if mirror else window)
    if not is_flow:
        return out.div_(127.5).sub_(1.0)
    if mirror:
        out[0].neg_()
    return out.clamp_(-FLOW_BOUND, FLOW_BOUND).div_(FLOW_BOUND)


def crop(x: torch.Tensor, top: int, left: int, size: int) -> torch.Tensor:
    return x[..., top: top + size, left: left + size]


def center_offsets(h: int, w: int, size: int) -> tuple[int, int]:
    return (h - size) // 2, (w - size) // 2


def hflip_clip(rgb: torch.Tensor | None, flow: torch.Tensor | None):
    """Mirror left-right; a mirrored flow field also has its x component negated."""
    if rgb is not None:
        rgb = rgb.flip(-1)
    if flow is not None:
        flow = flow.flip(-1)
        flow = torch.cat([-flow[:1], flow[1:]], dim=0)
    return rgb, flow


def random_crop(rgb: torch.Tensor, flow: torch.Tensor | None, rng: np.random.Generator, size: int,
                min_scale: float = 1.0):
    """The same random square crop of RGB and flow. ``min_scale < 1`` is a multi-scale crop (like mmaction's
    MultiScaleCrop in CycDA): the side is a random fraction in [min_scale, 1] of the short side, resized to
    ``size`` (flow vectors scaled with it); ``min_scale = 1`` is a plain ``size`` crop."""
    h, w = rgb.shape[-2:]
    side = size if min_scale >= 1 else max(8, round(min(h, w) * rng.uniform(min_scale, 1.0)))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    rgb = crop(rgb, top, left, side)
    flow = crop(flow, top, left, side) if flow is not None else None
    if side != size:
        rgb = fit_short_side(rgb, size, resize=size)
        flow = fit_short_side(flow, size, True, size) if flow is not None else None
    return rgb, flow


def color_jitter(rgb: torch.Tensor, rng: np.random.Generator, strength: float = 0.0, grayscale_p: float = 0.0):
    """One random brightness, contrast and saturation change (factors in [1 - strength, 1 + strength]) and, with
    probability ``grayscale_p``, conversion to gray, applied to the whole clip (3 x T x H x W in [-1, 1])."""
    if strength <= 0 and grayscale_p <= 0:
        return rgb
    x = (rgb + 1) / 2
    if strength > 0:
        b, c, s = (float(rng.uniform(1 - strength, 1 + strength)) for _ in range(3))
        x = x * b
        x = (x - x.mean()) * c + x.mean()
        gray = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
        x = gray + (x - gray) * s
    if grayscale_p > 0 and rng.random() < grayscale_p:
        x = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None].expand(3, *x.shape[1:])
    return x.clamp(0, 1) * 2 - 1


def flow_indices(frame_indices: np.ndarray, num_frames: int) -> np.ndarray:
    """The flow that goes with each frame index: flow t maps frame t to t+1, so the last frame has none and
    takes the last flow (the released code pads T-1 flows to T by repeating the last one)."""
    return np.minimum(frame_indices, max(num_frames - 2, 0)).astype(np.int64)


class _StoreDataset(Dataset):
    """Frames from ``frame_paths``, flows from ``flow_paths`` (default: the same files); same item ids."""

    stream = 0

    def __init__(self, frame_paths, flow_paths=None, seed: int = 0, crop_size: int = 224, resize: int | None = None,
                 cache: bool = False):
        self.frames = StoreCollection(_paths(frame_paths))
        flow_paths = _paths(flow_paths)
        self.flows = StoreCollection(flow_paths) if flow_paths else self.frames
        self.ids = list(self.frames.ids)
        self.labels = np.asarray(self.frames.labels, np.int64)
        self._num_frames = np.array([self.frames.num_frames(i) for i in self.ids], np.int64)
        self.seed, self.epoch = int(seed), 0
        self.crop_size, self.resize, self.cache = crop_size, resize, cache
        self._cache: dict = {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = {}  # each process fills its own
        return state

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        """Call before building the epoch's DataLoader iterator (workers copy the dataset then)."""
        self.epoch = int(epoch)

    def _rng(self, key: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.stream, self.epoch, int(key)))

    def _load(self, index: int, idx, is_flow: bool) -> torch.Tensor:
        """Frames, or flows, at store indices ``idx`` (None: all) as a resized tensor (see ``fit_short_side``)."""
        item_id = self.ids[index]
        if is_flow:
            x = flow_to_tensor(self.flows.read_flow(item_id, idx))
        else:
            x = rgb_to_tensor(self.frames.read_frames(item_id, idx))
        return fit_short_side(x, self.crop_size, is_flow, self.resize)

    def _clip(self, index: int, frame_idx: np.ndarray, is_flow: bool) -> torch.Tensor:
        """Resized RGB (3 x T x H x W) or flow (2 x T x H x W) at ``frame_idx`` (flows at the frames' flow
        indices). With ``cache`` the whole video is decoded and resized once per process and kept in memory
        (small benchmarks: SYN)."""
        idx = flow_indices(frame_idx, int(self._num_frames[index])) if is_flow else frame_idx
        if not self.cache:
            return self._load(index, idx, is_flow)
        key = (index, is_flow)
        if key not in self._cache:
            self._cache[key] = self._load(index, None, is_flow)
        return self._cache[key][:, torch.as_tensor(idx)]

    def _read(self, index: int, frame_idx: np.ndarray, with_flow: bool):
        """Resized RGB and flow (or None) at ``frame_idx``."""
        return self._clip(index, frame_idx, False), (self._clip(index, frame_idx, True) if with_flow else None)

    def _stored_fits(self, h: int, w: int) -> bool:
        """Whether stored frames of h x w need no resize (``fit_short_side`` leaves them as they are)."""
        return min(h, w) == (self.resize or max(self.crop_size, min(h, w)))

    def _training_clip(self, index: int, rgb_idx: np.ndarray, flow_idx: np.ndarray | None,
                       rng: np.random.Generator, min_scale: float, flip: bool, color: float, grayscale_p: float):
        """RGB at ``rgb_idx`` and flow (None: none) at the flow indices of ``flow_idx``, with one random crop
        (``random_crop``) and flip for both, then colour jitter of the RGB (``rng`` None: the centre crop, no
        flip, no jitter, for evaluation). Plain crops of frames stored at the right size are cut out of the
        stored frames before conversion (``stored_window``): the same values and the same draws from
        ``rng``, for less work."""
        frames = flows = None
        if not self.cache and min_scale >= 1:
            item_id, n = self.ids[index], int(self._num_frames[index])
            frames = self.frames.read_frames(item_id, rgb_idx)
            flows = None if flow_idx is None else self.flows.read_flow(item_id, flow_indices(flow_idx, n))
            h, w = frames.shape[1:3]
            size = self.crop_size
            if self._stored_fits(h, w) and min(h, w) >= size:
                top, left = (center_offsets(h, w, size) if rng is None else
                             (int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))))
                mirror = bool(flip and rng.random() < 0.5)
                rgb = stored_window(frames, top, left, size, mirror)
                flow = None if flows is None else stored_window(flows, top, left, size, mirror, is_flow=True)
                return color_jitter(rgb, rng, color, grayscale_p), flow
        if frames is None:
            rgb = self._clip(index, rgb_idx, False)
            flow = None if flow_idx is None else self._clip(index, flow_idx, True)
        else:  # read already: convert and resize what was read
            rgb = fit_short_side(rgb_to_tensor(frames), self.crop_size, False, self.resize)
            flow = None if flows is None else fit_short_side(flow_to_tensor(flows), self.crop_size, True, self.resize)
        if rng is None:  # evaluation: the centre crop
            top, left = center_offsets(*rgb.shape[-2:], self.crop_size)
            flow = None if flow is None else crop(flow, top, left, self.crop_size)
            return crop(rgb, top, left, self.crop_size), flow
        rgb, flow = random_crop(rgb, flow, rng, self.crop_size, min_scale)
        if flip and rng.random() < 0.5:
            rgb, flow = hflip_clip(rgb, flow)
        return color_jitter(rgb, rng, color, grayscale_p), flow


class SourceClipDataset(_StoreDataset):
    """Source training clips: ``num_frames`` consecutive frames of a synthesised source video (random start;
    the whole 16-frame video by default), random ``crop`` and horizontal flip shared by RGB and flow.
    Optional (off by default, as in the paper): multi-scale crop (``min_scale``) and colour jitter / grayscale
    of the RGB clip.

    Items: ``rgb`` 3 x T x S x S, ``flow`` 2 x T x S x S (when ``with_flow``), ``label``, ``index``.
    """

    stream = _SOURCE_STREAM

    def __init__(self, frame_paths, flow_paths=None, num_frames: int = 16, crop_size: int = 224,
                 flip: bool = True, with_flow: bool = True, seed: int = 0, resize: int | None = None,
                 cache: bool = False, min_scale: float = 1.0, color: float = 0.0, grayscale_p: float = 0.0):
        super().__init__(frame_paths, flow_paths, seed, crop_size, resize, cache)
        self.num_frames, self.flip, self.with_flow = num_frames, flip, with_flow
        self.min_scale, self.color, self.grayscale_p = min_scale, color, grayscale_p

    def __getitem__(self, key: int) -> dict:
        index = int(key) % len(self)
        rng = self._rng(key)
        idx = training_clip_indices(int(self._num_frames[index]), self.num_frames, rng)
        rgb, flow = self._training_clip(index, idx, idx if self.with_flow else None, rng, self.min_scale,
                                        self.flip, self.color, self.grayscale_p)
        item = {"rgb": rgb.contiguous(), "label": torch.tensor(self.labels[index]), "index": index}
        if flow is not None:
            item["flow"] = flow.contiguous()
        return item


class TargetPaceDataset(_StoreDataset):
    """Target clips for video pace prediction (Sec. 3.3): pace r uniform in 1..``num_paces``, a random start,
    ``num_frames`` indices from the looping pace sampler (``data.samplers.pace_indices``), random crop and
    flip. With ``flow_paths``, also a flow clip of ``num_frames`` consecutive flows from a random start (as
    the released code, whose target flow clip is not pace-resampled), with the same crop and flip: it goes
    through the flow stream in train mode so its batch norm sees target flows.
    Items: ``rgb``, ``pace_label`` = r - 1, ``index`` (and ``flow``).
    """

    stream = _TARGET_STREAM

    def __init__(self, frame_paths, num_frames: int = 16, crop_size: int = 224, num_paces: int = 5,
                 flip: bool = True, seed: int = 0, resize: int | None = None, cache: bool = False,
                 min_scale: float = 1.0, color: float = 0.0, grayscale_p: float = 0.0, flow_paths=None):
        super().__init__(frame_paths, flow_paths, seed, crop_size, resize, cache)
        self.num_frames, self.num_paces, self.flip = num_frames, num_paces, flip
        self.min_scale, self.color, self.grayscale_p = min_scale, color, grayscale_p
        self.with_flow = flow_paths is not None

    def __getitem__(self, key: int) -> dict:
        index = int(key) % len(self)
        rng = self._rng(key)
        n = int(self._num_frames[index])
        pace = int(rng.integers(1, self.num_paces + 1))
        start = int(rng.integers(0, n))
        rgb_idx = pace_indices(n, start, pace, self.num_frames)
        flow_idx = training_clip_indices(n, self.num_frames, rng) if self.with_flow else None
        rgb, flow = self._training_clip(index, rgb_idx, flow_idx, rng, self.min_scale, self.flip, self.color,
                                        self.grayscale_p)
        item = {"rgb": rgb.contiguous(), "pace_label": torch.tensor(pace - 1), "index": index}
        if flow is not None:
            item["flow"] = flow.contiguous()
        return item


class EvalClipDataset(_StoreDataset):
    """Evaluation / pseudo-labelling clips (the paper's evaluation): ``num_frames`` (32) int64 indices uniform over the
    whole video, centre crop, RGB and the flows at the same indices (clamped to the last flow).

    Items: ``rgb``, ``flow`` (when ``with_flow``), ``label`` (-1 when unknown), ``index``.
    """

    def __init__(self, frame_paths, flow_paths=None, num_frames: int = 32, crop_size: int = 224,
                 with_flow: bool = True, resize: int | None = None, cache: bool = False):
        super().__init__(frame_paths, flow_paths, 0, crop_size, resize, cache)
        self.num_frames, self.with_flow = num_frames, with_flow

    def frame_indices(self, index: int) -> np.ndarray:
        return uniform_indices(int(self._num_frames[index]), self.num_frames)

    def _center(self, x: torch.Tensor) -> torch.Tensor:
        top, left = center_offsets(*x.shape[-2:], self.crop_size)
        return crop(x, top, left, self.crop_size).contiguous()

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        idx = self.frame_indices(index)
        if self.cache:
            rgb, flow = self._read(index, idx, self.with_flow)
            rgb, flow = self._center(rgb), (self._center(flow) if flow is not None else None)
        else:
            rgb, flow = self._training_clip(index, idx, idx if self.with_flow else None, None, 1.0, False, 0.0, 0.0)
        item = {"rgb": rgb.contiguous(), "label": torch.tensor(self.labels[index]), "index": index}
        if flow is not None:
            item["flow"] = flow.contiguous()
        return item

    def bank_flow_clip(self, index: int, num_frames: int, mode: str = "subsample") -> torch.Tensor:
        """The flow clip a bank member contributes, centre-cropped, ``num_frames`` long. ``subsample``: the
        evaluation flows subsampled to the training clip length (32 -> 16 via every second index, as the
        released ``CategoryDB``), which doubles the temporal step the flow stream sees at evaluation;
        ``window``: ``num_frames`` consecutive evaluation indices around the middle of the video, the same
        temporal step as evaluation."""
        idx = self.frame_indices(index)
        if mode == "window":
            start = max(0, (len(idx) - num_frames) // 2)
            idx = idx[start:start + num_frames]
        elif mode == "subsample":
            step = max(1, len(idx) // num_frames)
            idx = idx[::step][:num_frames]
        else:
            raise ValueError(f"bank clip mode must be 'subsample' or 'window', got {mode!r}")
        if len(idx) < num_frames:  # fewer evaluation frames than training frames: repeat the last
            idx = np.concatenate([idx, np.full(num_frames - len(idx), idx[-1])])
        return self._center(self._clip(index, idx, True))


class EpochSampler(Sampler):
    """Keys for one epoch: ``num_samples`` draws made of shuffled passes over ``num_items`` items (key k stands
    for item k % num_items and seeds that draw), seeded by (seed, epoch), then sharded ``rank::world_size``
    (padded by wrapping so every rank gets the same count). ``shuffle=False`` keeps the order."""

    def __init__(self, num_items: int, num_samples: int | None = None, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1):
        self.num_items, self.seed, self.shuffle = num_items, seed, shuffle
        self.num_samples = num_items if num_samples is None else num_samples
        self.rank, self.world_size, self.epoch = rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def keys(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        keys, passes = [], 0
        while len(keys) < self.num_samples:
            order = torch.randperm(self.num_items, generator=g) if self.shuffle else torch.arange(self.num_items)
            keys.extend((order + passes * self.num_items).tolist())
            passes += 1
        keys = keys[: self.num_samples]
        per_rank = math.ceil(len(keys) / self.world_size)
        if keys:
            keys = (keys * math.ceil(per_rank * self.world_size / len(keys)))[: per_rank * self.world_size]
        return keys[self.rank:: self.world_size]

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.world_size)
