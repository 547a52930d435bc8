"""MiDaS v3.1 DPT depth models on current timm (MiDaS v3.1 release).

The paper generates its source videos with MiDaS ``dpt_beit_large_512`` (as its released code does): every still image
gets a relative inverse depth map that Depthstillation turns into camera motion. The official MiDaS code only runs
on timm 0.6.x because it monkey-patches timm's BEiT; this module rebuilds the same networks on timm >= 1.0:

- the backbone is timm's own model (``pretrained.model``), run block by block here so the BEiT relative position
  bias can follow the input size (MiDaS interpolates the table bilinearly to the window ``resolution // 16``);
- the DPT head (reassemble ``pretrained.act_postprocessK``, ``scratch.layerK_rn``, ``scratch.refinenetK``,
  ``scratch.output_conv``) is written out below;
- ``state_dict()`` uses exactly the key names and shapes of the official checkpoints (timm 0.6.13 layout), so
  ``dpt_*.pt`` files load unchanged; derived buffers the checkpoints carry (BEiT ``relative_position_index``,
  Swin-V2 ``attn_mask``) are checked against the values this model computes and then dropped.

Public entry points: ``MIDAS_VARIANTS``, ``build_midas``, ``load_midas``, ``network_input_size``,
``prepare_input``, ``predict_inverse_depth``, ``predict_inverse_depth_batch``.
"""
from __future__ import annotations

import functools
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass

import cv2
import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from data.errors import BadInputError

__all__ = [
    "MidasVariant", "MIDAS_VARIANTS", "MidasDPT", "build_midas", "load_midas", "constrain_to_multiple_of",
    "network_input_size", "prepare_input", "predict_inverse_depth", "predict_inverse_depth_batch",
    "beit_relative_position_index", "interpolate_rel_pos_table",
]

_RELEASE_URL = "https://github.com/isl-org/MiDaS/releases/download/v3_1/"


# ------------------------------------------------------------------------------------------------------------------
# Variants: data, not branches (like timm's default_cfgs).
# ------------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MidasVariant:
    """One MiDaS v3.1 DPT model: backbone, hooks, reassemble widths and its official input transform."""
    name: str
    backbone: str                  # timm model name
    family: str                    # "beit" | "swin2": how the backbone is run
    input_size: int                # MiDaS net_w = net_h
    hooks: tuple[int, ...]         # BEiT: block indices; Swin2: block index inside each of the 4 stages
    features: tuple[int, ...]      # reassemble widths = scratch.layerK_rn input channels
    fusion_features: int = 256     # scratch width ("features" in MiDaS)
    keep_aspect_ratio: bool = True  # False: the input is forced to input_size x input_size
    resize_method: str = "minimal"
    multiple_of: int = 32
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    url: str = ""

    @property
    def square(self) -> bool:
        return not self.keep_aspect_ratio


MIDAS_VARIANTS: dict[str, MidasVariant] = {v.name: v for v in [
    # The paper's depth model.
    MidasVariant("dpt_beit_large_512", "beit_large_patch16_512", "beit", 512, (5, 11, 17, 23),
                 (256, 512, 1024, 1024), url=_RELEASE_URL + "dpt_beit_large_512.pt"),
    MidasVariant("dpt_beit_large_384", "beit_large_patch16_384", "beit", 384, (5, 11, 17, 23),
                 (256, 512, 1024, 1024), url=_RELEASE_URL + "dpt_beit_large_384.pt"),
    MidasVariant("dpt_beit_base_384", "beit_base_patch16_384", "beit", 384, (2, 5, 8, 11),
                 (96, 192, 384, 768), url=_RELEASE_URL + "dpt_beit_base_384.pt"),
    MidasVariant("dpt_swin2_tiny_256", "swinv2_tiny_window16_256", "swin2", 256, (1, 1, 5, 1),
                 (96, 192, 384, 768), keep_aspect_ratio=False, url=_RELEASE_URL + "dpt_swin2_tiny_256.pt"),
]}


def _variant(name: str) -> MidasVariant:
    try:
        return MIDAS_VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown MiDaS model {name!r}; known: {', '.join(MIDAS_VARIANTS)}") from None


# ------------------------------------------------------------------------------------------------------------------
# Input transform (MiDaS transforms.Resize / NormalizeImage / PrepareForNet as configured in model_loader.py).
# ------------------------------------------------------------------------------------------------------------------

def constrain_to_multiple_of(x: float, multiple_of: int = 32, min_val: int = 0, max_val: int | None = None) -> int:
    """Round ``x`` to the nearest multiple (numpy half-to-even), floor if that exceeds ``max_val``, ceil if below
    ``min_val`` -- MiDaS ``Resize.constrain_to_multiple_of``."""
    y = int(np.round(x / multiple_of) * multiple_of)
    if max_val is not None and y > max_val:
        y = int(np.floor(x / multiple_of) * multiple_of)
    if y < min_val:
        y = int(np.ceil(x / multiple_of) * multiple_of)
    return y


def network_input_size(variant: MidasVariant | str, height: int, width: int) -> tuple[int, int]:
    """(height, width) the network sees for an image of ``height`` x ``width``.

    MiDaS "minimal" rule: of the two scales target/height and target/width take the one closest to 1, apply it to
    both sides, round each side to the nearest multiple of 32. Square-forced variants always get target x target.
    ``min_val`` is one multiple so that a side of under 16 px gives 32 where MiDaS would give an empty image.
    """
    v = _variant(variant) if isinstance(variant, str) else variant
    if v.resize_method != "minimal":
        raise NotImplementedError(f"resize method {v.resize_method!r}")
    scale_h = v.input_size / height
    scale_w = v.input_size / width
    if v.keep_aspect_ratio:
        if abs(1 - scale_w) < abs(1 - scale_h):
            scale_h = scale_w
        else:
            scale_w = scale_h
    new_h = constrain_to_multiple_of(scale_h * height, v.multiple_of, min_val=v.multiple_of)
    new_w = constrain_to_multiple_of(scale_w * width, v.multiple_of, min_val=v.multiple_of)
    return new_h, new_w


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 numpy image, got {type(image).__name__} "
                         f"{getattr(image, 'dtype', '')}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {image.shape}")
    if image.shape[2] == 1:  # MiDaS read_image turns grey into RGB
        image = np.repeat(image, 3, axis=2)
    return image


def prepare_input(variant: MidasVariant | str, image: np.ndarray) -> np.ndarray:
    """RGB uint8 HxWx3 -> float32 3xhxw network input: [0,1], bicubic resize (cv2.INTER_CUBIC) to
    ``network_input_size``, (x - mean) / std. Resize and normalisation run in float64 like MiDaS."""
    v = _variant(variant) if isinstance(variant, str) else variant
    image = _as_rgb_uint8(image)
    h, w = network_input_size(v, image.shape[0], image.shape[1])
    x = cv2.resize(image.astype(np.float64) / 255.0, (w, h), interpolation=cv2.INTER_CUBIC)
    x = (x - np.asarray(v.mean)) / np.asarray(v.std)
    return np.ascontiguousarray(x.transpose(2, 0, 1)).astype(np.float32)


# ------------------------------------------------------------------------------------------------------------------
# BEiT relative position bias for any window (MiDaS backbones/beit.py _get_rel_pos_bias, reimplemented).
# ------------------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=16)
def _rel_pos_index_cached(window: tuple[int, int], device: torch.device) -> torch.Tensor:
    wh, ww = window
    cpu = torch.device("cpu")  # explicit: callers may be inside a `with torch.device("meta")` block
    coords = torch.stack(torch.meshgrid(torch.arange(wh, device=cpu), torch.arange(ww, device=cpu),
                                        indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]                     # 2, N, N
    index = (rel[0] + wh - 1) * (2 * ww - 1) + (rel[1] + ww - 1)     # row-major in a (2wh-1, 2ww-1) table
    num_table = (2 * wh - 1) * (2 * ww - 1)
    full = torch.empty((wh * ww + 1, wh * ww + 1), dtype=torch.long, device=cpu)
    full[1:, 1:] = index
    full[0, :] = num_table          # cls -> token
    full[:, 0] = num_table + 1      # token -> cls
    full[0, 0] = num_table + 2      # cls -> cls
    return full.to(device)


def beit_relative_position_index(window: tuple[int, int], device: torch.device | str = "cpu") -> torch.Tensor:
    """BEiT's (N+1)x(N+1) index into the relative position table for a ``window`` = (h, w) patch grid, N = h*w;
    the last three table rows are cls->token, token->cls and cls->cls."""
    return _rel_pos_index_cached((int(window[0]), int(window[1])), torch.device(device)).clone()


def interpolate_rel_pos_table(table: torch.Tensor, old_window: tuple[int, int],
                              new_window: tuple[int, int]) -> torch.Tensor:
    """MiDaS's rule: the (2h-1)x(2w-1) part of a BEiT relative position table is resized bilinearly
    (align_corners=False) to the new window; the three cls rows are kept. (MiDaS reshapes the old part as
    (2w-1, 2h-1), the same thing for its square native windows; (2h-1, 2w-1) is BEiT's own layout.)"""
    if tuple(old_window) == tuple(new_window):
        return table
    old_h, old_w = 2 * old_window[0] - 1, 2 * old_window[1] - 1
    new_h, new_w = 2 * new_window[0] - 1, 2 * new_window[1] - 1
    grid = table[: old_h * old_w].reshape(1, old_h, old_w, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new_h, new_w), mode="bilinear", align_corners=False)
    return torch.cat([grid.permute(0, 2, 3, 1).reshape(new_h * new_w, -1), table[old_h * old_w:]])


def _beit_attention(attn: nn.Module, x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """timm BEiT ``Attention`` with the relative position bias of ``window`` instead of its built-in one."""
    b, n, _ = x.shape
    qkv_bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
    qkv = F.linear(x, attn.qkv.weight, qkv_bias).reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    table = interpolate_rel_pos_table(attn.relative_position_bias_table, attn.window_size, window)
    index = _rel_pos_index_cached(tuple(window), x.device)
    bias = table[index.view(-1)].view(n, n, -1).permute(2, 0, 1).unsqueeze(0).to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scale)
    return attn.proj(out.transpose(1, 2).reshape(b, n, -1))


def _beit_block(block: nn.Module, x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    x = x + block.drop_path1(block.gamma_1 * _beit_attention(block.attn, block.norm1(x), window))
    return x + block.drop_path2(block.gamma_2 * block.mlp(block.norm2(x)))


# ------------------------------------------------------------------------------------------------------------------
# Backbones (``pretrained``). Each keeps the official checkpoint key layout through state_dict hooks.
# ------------------------------------------------------------------------------------------------------------------

class ProjectReadout(nn.Module):
    """DPT "project" readout: every patch token is concatenated with the cls token and projected back."""

    def __init__(self, dim: int):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, 1:]
        return self.project(torch.cat([patches, tokens[:, :1].expand_as(patches)], dim=-1))


class TokensToGrid(nn.Module):
    """B x N x C tokens -> B x C x h x w map (MiDaS's Transpose + Unflatten, sized by the actual input)."""

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return x.transpose(1, 2).unflatten(2, grid)


class Reassemble(nn.Sequential):
    """``act_postprocessK``: readout, tokens->grid, 1x1 conv to the stage width, then resample to 1/4, 1/8, 1/16
    or 1/32 of the input. Slot 2 is empty so the weight indices (0, 3, 4) match the official checkpoints."""

    def __init__(self, vit_features: int, out_features: int, resample: nn.Module | None):
        layers = [ProjectReadout(vit_features), TokensToGrid(), nn.Identity(),
                  nn.Conv2d(vit_features, out_features, kernel_size=1)]
        super().__init__(*layers, *([resample] if resample is not None else []))

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = self[1](self[0](tokens), grid)
        for layer in list(self)[3:]:
            x = layer(x)
        return x


def _pop_prefixed(state_dict: dict, prefix: str) -> list[tuple[str, torch.Tensor]]:
    """Remove and return, in order, the entries of one module (they are the tail of the dict being built)."""
    keys = [k for k in state_dict if k.startswith(prefix)]
    return [(k[len(prefix):], state_dict.pop(k)) for k in keys]


class BeitBackbone(nn.Module):
    """timm BEiT run block by block at any input size (sides multiples of 16), hooks -> 4 reassembled maps."""

    def __init__(self, variant: MidasVariant):
        super().__init__()
        self.model = timm.create_model(variant.backbone, pretrained=False)
        if self.model.pos_embed is not None or self.model.rel_pos_bias is not None:
            raise ValueError(f"{variant.backbone}: expected per-block relative position bias only")
        self.hooks = tuple(variant.hooks)
        dim = self.model.embed_dim
        f = variant.features
        self.act_postprocess1 = Reassemble(dim, f[0], nn.ConvTranspose2d(f[0], f[0], kernel_size=4, stride=4))
        self.act_postprocess2 = Reassemble(dim, f[1], nn.ConvTranspose2d(f[1], f[1], kernel_size=2, stride=2))
        self.act_postprocess3 = Reassemble(dim, f[2], None)
        self.act_postprocess4 = Reassemble(dim, f[3], nn.Conv2d(f[3], f[3], kernel_size=3, stride=2, padding=1))
        self.model.register_state_dict_post_hook(_beit_add_index_keys)
        self.model.register_load_state_dict_pre_hook(_beit_check_index_keys)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        m = self.model
        patch = m.patch_embed.patch_size
        grid = (x.shape[-2] // patch[0], x.shape[-1] // patch[1])
        tokens = m.patch_embed.norm(m.patch_embed.proj(x).flatten(2).transpose(1, 2))
        tokens = m.pos_drop(torch.cat([m.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1))
        taken = []
        for i, block in enumerate(m.blocks[: self.hooks[-1] + 1]):
            tokens = _beit_block(block, tokens, grid)
            if i in self.hooks:
                taken.append(tokens)
        posts = (self.act_postprocess1, self.act_postprocess2, self.act_postprocess3, self.act_postprocess4)
        return [post(t, grid) for post, t in zip(posts, taken)]


def _beit_add_index_keys(module, state_dict, prefix, local_metadata):
    """Emit ``blocks.N.attn.relative_position_index`` after each table, as timm 0.6 checkpoints do (one tensor
    shared by all blocks, so a saved file holds it once)."""
    indices = {}
    for key, value in _pop_prefixed(state_dict, prefix):
        state_dict[prefix + key] = value
        found = re.fullmatch(r"blocks\.(\d+)\.attn\.relative_position_bias_table", key)
        if found:
            window = tuple(module.blocks[int(found.group(1))].attn.window_size)
            if window not in indices:
                indices[window] = beit_relative_position_index(window)
            state_dict[prefix + key.replace("bias_table", "index")] = indices[window]


def _beit_check_index_keys(module, state_dict, prefix, local_metadata, strict, missing, unexpected, error_msgs):
    """Accept the checkpoints' ``relative_position_index`` buffers if they equal ours, then drop them."""
    for i, block in enumerate(module.blocks):
        key = f"{prefix}blocks.{i}.attn.relative_position_index"
        if key not in state_dict:
            continue
        given = state_dict.pop(key)
        window = tuple(block.attn.window_size)
        expected = _rel_pos_index_cached(window, torch.device("cpu"))
        if tuple(given.shape) != tuple(expected.shape) or not torch.equal(given.detach().cpu().long(), expected):
            error_msgs.append(f"{key}: shape {list(given.shape)} differs from the BEiT relative position index "
                              f"for a {window[0]}x{window[1]} window ({list(expected.shape)}) or its values do")


class Swin2Backbone(nn.Module):
    """timm Swin-V2 at its native square size; hooked block outputs of the 4 stages as NCHW maps."""

    def __init__(self, variant: MidasVariant):
        super().__init__()
        self.model = timm.create_model(variant.backbone, pretrained=False)
        self.hooks = tuple(variant.hooks)
        self.model.register_state_dict_post_hook(_swin2_to_legacy_keys)
        self.model.register_load_state_dict_pre_hook(_swin2_from_legacy_keys)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.model.patch_embed(x)  # B H W C
        taken = []
        for stage, hook in zip(self.model.layers, self.hooks):
            x = stage.downsample(x)
            for j, block in enumerate(stage.blocks):
                x = block(x)
                if j == hook:
                    taken.append(x.permute(0, 3, 1, 2))
        return taken


# timm 0.6 downsamples at the end of stage i (``layers.i.downsample``), timm >= 0.9 at the start of stage i+1.
def _swin2_to_legacy_keys(module, state_dict, prefix, local_metadata):
    seen = set()
    for key, value in _pop_prefixed(state_dict, prefix):
        block = re.match(r"layers\.(\d+)\.blocks\.(\d+)\.", key)
        if block and block.groups() not in seen:
            seen.add(block.groups())
            mask = module.layers[int(block.group(1))].blocks[int(block.group(2))].attn_mask
            if mask is not None:
                state_dict[f"{prefix}layers.{block.group(1)}.blocks.{block.group(2)}.attn_mask"] = mask.detach()
        key = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", key)
        state_dict[prefix + re.sub(r"^head\.fc\.", "head.", key)] = value


def _swin2_from_legacy_keys(module, state_dict, prefix, local_metadata, strict, missing, unexpected, error_msgs):
    legacy = any(k.startswith(prefix + "layers.0.downsample.") for k in state_dict)
    for key, value in _pop_prefixed(state_dict, prefix):
        mask_key = re.fullmatch(r"layers\.(\d+)\.blocks\.(\d+)\.attn_mask", key)
        if mask_key:
            i, j = int(mask_key.group(1)), int(mask_key.group(2))
            ours = module.layers[i].blocks[j].attn_mask if i < len(module.layers) and j < len(
                module.layers[i].blocks) else None
            if ours is None or ours.shape != value.shape or not torch.equal(ours.cpu(), value.cpu().to(ours.dtype)):
                error_msgs.append(f"{prefix}{key}: does not equal the shifted-window mask of this Swin-V2")
            continue
        if legacy:
            key = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", key)
            key = re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", key)
        state_dict[prefix + key] = value


# ------------------------------------------------------------------------------------------------------------------
# DPT head (``scratch``).
# ------------------------------------------------------------------------------------------------------------------

class ResidualConvUnit(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FeatureFusionBlock(nn.Module):
    """refinenetK: add the refined skip map, refine, upsample (x2 or to ``size``) bilinearly, 1x1 conv."""

    def __init__(self, features: int):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, size=None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
        return self.out_conv(x)


class Interpolate(nn.Module):
    def __init__(self, scale_factor: float):
        super().__init__()
        self.scale_factor = scale_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale_factor, mode="bilinear", align_corners=True)


class MidasDPT(nn.Module):
    """MiDaS v3.1 ``DPTDepthModel(non_negative=True)``: B x 3 x H x W normalised image -> B x H x W inverse depth."""

    def __init__(self, variant: MidasVariant | str):
        super().__init__()
        self.variant = _variant(variant) if isinstance(variant, str) else variant
        v = self.variant
        self.pretrained = BeitBackbone(v) if v.family == "beit" else Swin2Backbone(v)
        f = v.fusion_features
        self.scratch = nn.Module()
        for k, width in enumerate(v.features, start=1):
            setattr(self.scratch, f"layer{k}_rn", nn.Conv2d(width, f, kernel_size=3, padding=1, bias=False))
        for k in range(1, 5):
            setattr(self.scratch, f"refinenet{k}", FeatureFusionBlock(f))
        self.scratch.output_conv = nn.Sequential(
            nn.Conv2d(f, f // 2, kernel_size=3, padding=1),
            Interpolate(scale_factor=2),
            nn.Conv2d(f // 2, 32, kernel_size=3, padding=1),
            nn.ReLU(True),
            nn.Conv2d(32, 1, kernel_size=1),
            nn.ReLU(True),  # non_negative
            nn.Identity(),
        )

    @property
    def name(self) -> str:
        return self.variant.name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 16 or x.shape[-1] % 16:
            raise ValueError(f"{self.name}: input sides must be multiples of 16 (MiDaS uses 32), got {tuple(x.shape)}")
        s = self.scratch
        l1, l2, l3, l4 = self.pretrained(x)
        r1, r2, r3, r4 = s.layer1_rn(l1), s.layer2_rn(l2), s.layer3_rn(l3), s.layer4_rn(l4)
        path = s.refinenet4(r4, size=r3.shape[2:])
        path = s.refinenet3(path, r3, size=r2.shape[2:])
        path = s.refinenet2(path, r2, size=r1.shape[2:])
        path = s.refinenet1(path, r1)
        return s.output_conv(path).squeeze(1)


# ------------------------------------------------------------------------------------------------------------------
# Construction and loading.
# ------------------------------------------------------------------------------------------------------------------

def _skeleton(name: str, device: torch.device | str = "cpu") -> MidasDPT:
    """The model with uninitialised weights (built on the meta device: timm's own init takes ~30 s for BEiT-L)
    and its derived buffers (k_bias, relative position indices, shifted-window masks) computed."""
    with torch.device("meta"):
        model = MidasDPT(name)
    model.to_empty(device=device)
    for module in model.modules():
        if hasattr(module, "init_non_persistent_buffers"):
            module.init_non_persistent_buffers()
    return model


def build_midas(name: str, seed: int = 0) -> MidasDPT:
    """A randomly initialised model in eval mode (tests, benchmarks). Weights are uniform with fan-in scaling,
    layer-norm weights near 1, everything else small but non-zero, so that every part of the network
    (relative position tables included) influences the output."""
    model = _skeleton(name)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("logit_scale"):
                p.fill_(math.log(10.0))  # Swin-V2's own init; the cosine attention temperature
            elif p.ndim >= 2:
                bound = math.sqrt(6.0 / p[0].numel())  # He-uniform: keeps activations O(1) through the ReLUs
                p.uniform_(-bound, bound, generator=g)
            else:
                p.uniform_(-0.1, 0.1, generator=g)
        for module in model.modules():
            if isinstance(module, nn.LayerNorm) and module.weight is not None:
                module.weight.add_(1.0)
        model.scratch.output_conv[4].bias.fill_(1.0)  # most of a random model's output survives the final ReLU
    return model.eval()


@functools.lru_cache(maxsize=None)
def _expected_shapes(name: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = MidasDPT(name)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _describe_mismatch(sd: dict, expected: dict[str, tuple[int, ...]], show: int = 3) -> str | None:
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k} {list(sd[k].shape)} vs model {list(expected[k])}" for k in expected
              if k in sd and tuple(sd[k].shape) != expected[k]]
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            more = f", ... (+{len(items) - show})" if len(items) > show else ""
            parts.append(f"{len(items)} {label} ({', '.join(items[:show])}{more})")
    return "; ".join(parts) or None


def _guess_variant(sd: dict) -> str | None:
    for other in MIDAS_VARIANTS:
        if _describe_mismatch(sd, _expected_shapes(other)) is None:
            return other
    return None


def load_midas(name: str, path: str | os.PathLike, device: str | torch.device = "cpu") -> MidasDPT:
    """MiDaS ``name`` with the official checkpoint at ``path`` (a plain state_dict or ``{"model": ...}``), in eval
    mode on ``device``. Raises FileNotFoundError or BadInputError naming the file, the model and the problem."""
    variant = _variant(name)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: MiDaS checkpoint for {name!r} not found (official weights: {variant.url})")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, pickled code refused by weights_only ...
        raise BadInputError(path, f"cannot be read as a torch checkpoint for MiDaS {name!r} "
                                  f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    if isinstance(sd, dict) and isinstance(sd.get("model"), dict):
        sd = sd["model"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise BadInputError(path, f"is not a state_dict of tensors (MiDaS {name!r} expected)")
    problem = _describe_mismatch(sd, _expected_shapes(name))
    if problem:
        guess = _guess_variant(sd)
        hint = f"; it looks like a {guess!r} checkpoint" if guess else ""
        raise BadInputError(path, f"does not match MiDaS {name!r}: {problem}{hint}")
    model = _skeleton(name)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise BadInputError(path, f"does not match MiDaS {name!r}: {e}") from e
    return model.to(device).eval()


# ------------------------------------------------------------------------------------------------------------------
# Inference.
# ------------------------------------------------------------------------------------------------------------------

def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def predict_inverse_depth_batch(model: MidasDPT, images: list[np.ndarray], device: str | torch.device | None = None,
                                batch_size: int = 8) -> list[np.ndarray]:
    """Relative inverse depth (larger = nearer) of each RGB uint8 image, float32 at the image's own size.

    Images with the same network input size are batched together; each prediction is resized back bicubically
    (MiDaS run.py). ``device`` defaults to the model's; if given, the model is moved there.
    """
    if device is not None:
        model.to(device)
    device = _model_device(model)
    images = [_as_rgb_uint8(im) for im in images]
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, im in enumerate(images):
        groups[network_input_size(model.variant, im.shape[0], im.shape[1])].append(i)
    out: list[np.ndarray | None] = [None] * len(images)
    with torch.inference_mode():
        for indices in groups.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start: start + batch_size]
                x = torch.from_numpy(np.stack([prepare_input(model.variant, images[i]) for i in chunk]))
                pred = model(x.to(device, non_blocking=True))
                for row, i in enumerate(chunk):
                    full = F.interpolate(pred[row][None, None], size=images[i].shape[:2], mode="bicubic",
                                         align_corners=False)
                    out[i] = full[0, 0].float().cpu().numpy()
    return out


def predict_inverse_depth(model: MidasDPT, image: np.ndarray) -> np.ndarray:
    """Relative inverse depth (larger = nearer) of one RGB uint8 HxWx3 image as float32 HxW."""
    return predict_inverse_depth_batch(model, [image], batch_size=1)[0]
