"""Inception-I3D (Carreira & Zisserman, CVPR 2017), compatible with the public PyTorch port.

The network follows DeepMind ``kinetics-i3d`` ``i3d.py`` and its PyTorch port piergiaj/pytorch-i3d
``pytorch_i3d.py``: the same endpoint names, module names (``conv3d``/``bn``, ``b0`` ... ``b3b``,
``avg_pool``, ``dropout``, ``logits``) and TF-style "same" padding, so the published
``rgb_imagenet.pt`` / ``flow_imagenet.pt`` checkpoints load without key surgery (the state_dict has the
same names and shapes as the public PyTorch Inception-I3D; tests/test_i3d.py checks them).

``ENDPOINTS`` is the architecture. Two things are parameters of that table, not copies of the network:

* ``temporal_variant``: ``"kinetics"`` is the public model; ``"st_i2v"`` is the ST-I2V / CFB modification
  (``MaxPool3d_4a_3x3`` and ``MaxPool3d_5a_2x2`` with temporal stride 1, ``avg_pool`` temporal kernel 1),
  which gives one logit vector per two input frames (16 frames -> 8).
* ``width_mult``: scales every channel count (min 8), for small CPU runs; such models cannot load the
  published checkpoints.

One deliberate generalisation: ``avg_pool`` averages over the whole remaining spatial map instead of a
fixed 7x7 window. At 224x224 input the map is 7x7, so this is numerically the public ``AvgPool3d([2, 7, 7],
stride=1)``; smaller crops (tests) work instead of failing.

Inputs are B x C x T x H x W in [-1, 1] (``x / 255 * 2 - 1``): RGB with C = 3, or TV-L1 flow with C = 2
(x then y, clipped to +-20 and scaled to [-1, 1]).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# (name, kind, channels, kernel (t, h, w), stride (t, h, w)), in forward order, as in pytorch_i3d.py.
# Mixed channels: (b0, b1a, b1b, b2a, b2b, b3b); the module outputs b0 + b1b + b2b + b3b channels.
ENDPOINTS = (
    ("Conv3d_1a_7x7", "conv", 64, (7, 7, 7), (2, 2, 2)),
    ("MaxPool3d_2a_3x3", "pool", None, (1, 3, 3), (1, 2, 2)),
    ("Conv3d_2b_1x1", "conv", 64, (1, 1, 1), (1, 1, 1)),
    ("Conv3d_2c_3x3", "conv", 192, (3, 3, 3), (1, 1, 1)),
    ("MaxPool3d_3a_3x3", "pool", None, (1, 3, 3), (1, 2, 2)),
    ("Mixed_3b", "mixed", (64, 96, 128, 16, 32, 32), None, None),
    ("Mixed_3c", "mixed", (128, 128, 192, 32, 96, 64), None, None),
    ("MaxPool3d_4a_3x3", "pool", None, (3, 3, 3), (2, 2, 2)),
    ("Mixed_4b", "mixed", (192, 96, 208, 16, 48, 64), None, None),
    ("Mixed_4c", "mixed", (160, 112, 224, 24, 64, 64), None, None),
    ("Mixed_4d", "mixed", (128, 128, 256, 24, 64, 64), None, None),
    ("Mixed_4e", "mixed", (112, 144, 288, 32, 64, 64), None, None),
    ("Mixed_4f", "mixed", (256, 160, 320, 32, 128, 128), None, None),
    ("MaxPool3d_5a_2x2", "pool", None, (2, 2, 2), (2, 2, 2)),
    ("Mixed_5b", "mixed", (256, 160, 320, 32, 128, 128), None, None),
    ("Mixed_5c", "mixed", (384, 192, 384, 48, 128, 128), None, None),
)

# Temporal variants: temporal-stride overrides per endpoint, and the temporal kernel of `avg_pool`.
TEMPORAL_VARIANTS = {
    "kinetics": {"temporal_strides": {}, "avg_pool_frames": 2},  # piergiaj/pytorch-i3d
    "st_i2v": {"temporal_strides": {"MaxPool3d_4a_3x3": 1, "MaxPool3d_5a_2x2": 1}, "avg_pool_frames": 1},
}

# The published pytorch-i3d checkpoints (converted DeepMind weights; files must be supplied locally).
PRETRAINED_CFGS = {
    "rgb_imagenet": {"file": "rgb_imagenet.pt", "in_channels": 3, "num_classes": 400},
    "flow_imagenet": {"file": "flow_imagenet.pt", "in_channels": 2, "num_classes": 400},
    "rgb_charades": {"file": "rgb_charades.pt", "in_channels": 3, "num_classes": 157},
    "flow_charades": {"file": "flow_charades.pt", "in_channels": 2, "num_classes": 157},
}

# "The first three Unit3D blocks", frozen by `freeze_stem`.
STEM = ("Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3")


def same_padding(size, kernel, stride) -> tuple[int, ...]:
    """TF "SAME" padding for ``F.pad`` (last dim first), computed per input as in pytorch_i3d.py.

    pad = max(k - s, 0) if n % s == 0 else max(k - n % s, 0); the front gets pad // 2, the back the rest.
    """
    pads = []
    for n, k, s in zip(size, kernel, stride):
        pad = max(k - s, 0) if n % s == 0 else max(k - n % s, 0)
        pads.append((pad // 2, pad - pad // 2))
    return tuple(p for front_back in reversed(pads) for p in front_back)


class Unit3D(nn.Module):
    """Conv3d (no padding; bias only if ``use_bias``) -> BatchNorm3d(eps=1e-3, momentum=0.01) -> ReLU."""

    def __init__(self, in_channels, out_channels, kernel=(1, 1, 1), stride=(1, 1, 1),
                 use_bn=True, use_bias=False, activation=True):
        super().__init__()
        self.kernel, self.stride, self.activation = tuple(kernel), tuple(stride), activation
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, padding=0, bias=use_bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-3, momentum=0.01) if use_bn else None

    def forward(self, x):
        x = self.conv3d(F.pad(x, same_padding(x.shape[2:], self.kernel, self.stride)))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.activation else x


class MaxPool3dSame(nn.Module):
    """Max-pool with TF "same" padding; pads with zeros like pytorch_i3d.py (inputs are post-ReLU, >= 0)."""

    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x):
        return F.max_pool3d(F.pad(x, same_padding(x.shape[2:], self.kernel, self.stride)), self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four branches concatenated in order b0, b1 (1x1 -> 3x3x3), b2 (1x1 -> 3x3x3), b3 (max-pool -> 1x1)."""

    def __init__(self, in_channels, channels):
        super().__init__()
        c0, c1a, c1b, c2a, c2b, c3b = channels
        self.b0 = Unit3D(in_channels, c0)
        self.b1a = Unit3D(in_channels, c1a)
        self.b1b = Unit3D(c1a, c1b, kernel=(3, 3, 3))
        self.b2a = Unit3D(in_channels, c2a)
        self.b2b = Unit3D(c2a, c2b, kernel=(3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, c3b)
        self.out_channels = c0 + c1b + c2b + c3b

    def forward(self, x):
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


class SpatialGlobalAvgPool3d(nn.Module):
    """``AvgPool3d([frames, H, W], stride=1)`` over the whole remaining H x W map.

    At 224x224 input H = W = 7, i.e. exactly the public ``AvgPool3d([2, 7, 7], stride=1)``.
    """

    def __init__(self, frames):
        super().__init__()
        self.frames = frames

    def forward(self, x):
        if x.shape[2] < self.frames:
            raise ValueError(f"I3D avg_pool needs >= {self.frames} feature frames, got {x.shape[2]}: "
                             "the input clip is too short (the kinetics variant needs >= 9 frames)")
        return F.avg_pool3d(x, (self.frames, x.shape[3], x.shape[4]), stride=1)


def _scale(channels, width_mult):
    return max(8, int(round(channels * width_mult)))


class InceptionI3d(nn.Module):
    """Inception-I3D built from ``ENDPOINTS``; state_dict names equal pytorch_i3d.py's ``InceptionI3d``.

    ``forward`` returns per-frame logits B x num_classes x T' (the public model's output after its
    ``squeeze(3).squeeze(3)``). Kinetics variant: T' = ceil(T / 8) - 1; ST-I2V variant: T' = ceil(T / 2).
    """

    def __init__(self, num_classes=400, in_channels=3, temporal_variant="kinetics", width_mult=1.0, dropout=0.5):
        super().__init__()
        if temporal_variant not in TEMPORAL_VARIANTS:
            raise ValueError(f"unknown temporal_variant {temporal_variant!r}; choose from {sorted(TEMPORAL_VARIANTS)}")
        if not 0 < width_mult <= 1:
            raise ValueError(f"width_mult must be in (0, 1], got {width_mult}")
        variant = TEMPORAL_VARIANTS[temporal_variant]
        self.num_classes, self.in_channels = num_classes, in_channels
        self.temporal_variant, self.width_mult = temporal_variant, width_mult

        endpoints, channels = [], in_channels
        for name, kind, out, kernel, stride in ENDPOINTS:
            if kind == "conv":
                module = Unit3D(channels, _scale(out, width_mult), kernel, stride)
                channels = module.conv3d.out_channels
            elif kind == "pool":
                stride = (variant["temporal_strides"].get(name, stride[0]),) + stride[1:]
                module = MaxPool3dSame(kernel, stride)
            else:
                module = InceptionModule(channels, [_scale(c, width_mult) for c in out])
                channels = module.out_channels
            endpoints.append((name, module))
        self.feature_dim = channels  # 1024 at width_mult 1.0

        # The head is registered before the endpoints so that the state_dict order matches pytorch_i3d.py.
        self.avg_pool = SpatialGlobalAvgPool3d(variant["avg_pool_frames"])
        self.dropout = nn.Dropout(dropout)
        self.logits = self._new_logits(num_classes)
        for name, module in endpoints:
            self.add_module(name, module)
        self.endpoint_names = tuple(name for name, _ in endpoints)

    def _new_logits(self, num_classes):
        return Unit3D(self.feature_dim, num_classes, use_bn=False, use_bias=True, activation=False)

    def replace_logits(self, num_classes):
        """Fresh 1x1x1 ``logits`` layer for ``num_classes`` (load the 400-class checkpoint first, as pytorch-i3d)."""
        old = self.logits.conv3d.weight
        self.logits = self._new_logits(num_classes).to(device=old.device, dtype=old.dtype)
        self.num_classes = num_classes
        return self

    def freeze_stem(self):
        """Set ``requires_grad=False`` on the parameters of Conv3d_1a_7x7, Conv3d_2b_1x1 and Conv3d_2c_3x3.

        As in the released ST-I2V/CFB code, their BatchNorm running statistics still update in train mode
        (only gradients are stopped); call ``.eval()`` on those modules after ``model.train()`` to fix them.
        """
        for name in STEM:
            for p in getattr(self, name).parameters():
                p.requires_grad_(False)
        return self

    def extract_features(self, x):
        """B x C x T x H x W in [-1, 1] -> B x feature_dim x T' (after ``avg_pool``, before dropout/logits)."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"I3D expects B x {self.in_channels} x T x H x W input, got shape {tuple(x.shape)}")
        for name in self.endpoint_names:
            x = self._modules[name](x)
        return self.avg_pool(x).flatten(2)

    def forward_with_features(self, x):
        """One pass giving (per-frame logits B x num_classes x T', features B x feature_dim x T')."""
        features = self.extract_features(x)
        logits = self.logits(self.dropout(features[..., None, None]))
        return logits.flatten(2), features

    def forward(self, x):
        return self.forward_with_features(x)[0]


def checkpoint_filter_fn(state_dict):
    """Adapt a pytorch-i3d style checkpoint to our names: strip the ``module.`` prefix of nn.DataParallel."""
    prefix = "module."
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def read_i3d_checkpoint(path):
    """Read a checkpoint (plain state_dict, or ``{"state_dict": ...}`` / ``{"model": ...}``) and filter it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"I3D checkpoint {path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, disallowed pickle globals, ...
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise ValueError(f"I3D checkpoint {path}: torch.load(weights_only=True) cannot read it (truncated or "
                         f"not a torch checkpoint of tensors): {type(e).__name__}: {reason}") from e
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"I3D checkpoint {path}: expected a state_dict (names -> tensors), "
                         f"got {type(obj).__name__}")
    return checkpoint_filter_fn(obj)


def load_pretrained(model, state_dict, source="<state_dict>"):
    """Load a published-format I3D state_dict into ``model``, strictly except missing ``num_batches_tracked``.

    Raises ValueError naming ``source`` on a width-scaled model, a wrong input-channel count (e.g. a flow
    checkpoint loaded as RGB), or missing / unexpected / wrongly shaped keys.
    """
    if model.width_mult != 1.0:
        raise ValueError(f"I3D checkpoint {source}: published checkpoints need width_mult=1.0, "
                         f"this model has width_mult={model.width_mult}")
    own = model.state_dict()
    stem = "Conv3d_1a_7x7.conv3d.weight"
    if stem in state_dict and state_dict[stem].shape != own[stem].shape:
        raise ValueError(f"I3D checkpoint {source}: input channels do not match: {stem} has shape "
                         f"{tuple(state_dict[stem].shape)} in the file, expected {tuple(own[stem].shape)} for "
                         f"in_channels={model.in_channels} (RGB checkpoints have 3 channels, flow checkpoints 2)")
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [f"{k} {tuple(v.shape)} != {tuple(own[k].shape)}" for k, v in state_dict.items()
             if k in own and v.shape != own[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"I3D checkpoint {source}: not an Inception-I3D state_dict for this model: "
                         f"{len(missing)} missing keys {missing[:4]}, {len(unexpected)} unexpected keys "
                         f"{unexpected[:4]}, {len(wrong)} wrong shapes {wrong[:4]}")
    model.load_state_dict(state_dict, strict=False)
    return model


def load_i3d(path, in_channels=3, num_classes=None, temporal_variant="kinetics"):
    """Build an InceptionI3d from a checkpoint file, then optionally ``replace_logits(num_classes)``.

    The class count of the checkpoint (400 Kinetics, 157 Charades) is read from its ``logits`` layer.
    """
    state_dict = read_i3d_checkpoint(path)
    logits = state_dict.get("logits.conv3d.weight")
    model = InceptionI3d(num_classes=logits.shape[0] if logits is not None else 400, in_channels=in_channels,
                         temporal_variant=temporal_variant)
    load_pretrained(model, state_dict, source=path)
    if num_classes is not None:
        model.replace_logits(num_classes)
    return model
