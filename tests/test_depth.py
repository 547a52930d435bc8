"""MiDaS v3.1 DPT depth models (model/depth.py): checkpoint layout, input transform, agreement with an
independent reference of what the official MiDaS code computes, and the loader's error messages.

The official MiDaS code cannot run on current timm, so the reference below re-derives its forward pass from
timm's own modules: a timm BEiT built for the actual input size (its own relative position index and attention)
holding the relative position tables interpolated by MiDaS's rule, then the DPT head written with torch.functional.
All weights are random; no test needs the real checkpoints.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.beit import gen_relative_position_index
from timm.models.swin_transformer_v2 import checkpoint_filter_fn as timm_swin2_filter

from data.errors import BadInputError
from model.depth import (
    MIDAS_VARIANTS, MidasDPT, beit_relative_position_index, build_midas, constrain_to_multiple_of,
    interpolate_rel_pos_table, load_midas, network_input_size, predict_inverse_depth, predict_inverse_depth_batch,
    prepare_input,
)
from tests.conftest import require

REFERENCE_JSON = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "midas_state_dict_keys.json"
CHECKED = ["dpt_beit_large_512", "dpt_beit_base_384", "dpt_swin2_tiny_256"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The test machine's cores are shared: a second torch thread mostly spins."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def beit_base():
    return build_midas("dpt_beit_base_384", seed=1)


@pytest.fixture(scope="module")
def swin2_tiny():
    return build_midas("dpt_swin2_tiny_256", seed=2)


@functools.lru_cache(maxsize=None)
def reference_keys() -> dict[str, dict[str, list[int]]]:
    """Every key and shape of the official checkpoints (timm 0.6.13 layout), from ../shared/reference."""
    return json.loads(require(REFERENCE_JSON, "the reference key list").read_text())


@functools.lru_cache(maxsize=None)
def _timm_skeleton(name: str, **kwargs):
    """A timm model with uninitialised weights and its derived buffers computed (skips timm's slow init)."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, **kwargs)
    model.to_empty(device="cpu")
    for module in model.modules():
        if hasattr(module, "init_non_persistent_buffers"):
            module.init_non_persistent_buffers()
    return model.eval()


def _fast_skeleton(name: str) -> MidasDPT:
    """Our model with uninitialised weights (for loading tests)."""
    with torch.device("meta"):
        model = MidasDPT(name)
    model.to_empty(device="cpu")
    for module in model.modules():
        if hasattr(module, "init_non_persistent_buffers"):
            module.init_non_persistent_buffers()
    return model


def _meta_model(name: str) -> MidasDPT:
    with torch.device("meta"):
        return MidasDPT(name)


def _reference_state_dict(name: str) -> dict[str, torch.Tensor]:
    """A stand-in official checkpoint: every reference key with a constant tensor of its shape (stored as one
    element), derived buffers with their true values from timm."""
    return dict(_cached_reference_state_dict(name))


@functools.lru_cache(maxsize=None)
def _cached_reference_state_dict(name: str) -> dict[str, torch.Tensor]:
    shapes = reference_keys()[name]
    sd = {k: torch.full((1,), 0.5).expand(shape) for k, shape in shapes.items()}
    v = MIDAS_VARIANTS[name]
    if v.family == "beit":
        index = gen_relative_position_index((v.input_size // 16, v.input_size // 16))
        sd.update({k: index for k in shapes if k.endswith("relative_position_index")})
    else:
        swin = _timm_skeleton(v.backbone)
        for k in shapes:
            if k.endswith("attn_mask"):
                sd[k] = swin.get_submodule(k[len("pretrained.model."):-len(".attn_mask")]).attn_mask
    return sd


# ---------------------------------------------------------------------------------------------------------------
# Variants and checkpoint layout
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CHECKED)
def test_variant_row_agrees_with_reference_checkpoint(name):
    v, ref = MIDAS_VARIANTS[name], reference_keys()[name]
    assert [ref[f"scratch.layer{k}_rn.weight"][1] for k in range(1, 5)] == list(v.features)
    assert ref["scratch.layer1_rn.weight"][0] == v.fusion_features
    assert v.mean == v.std == (0.5, 0.5, 0.5) and v.resize_method == "minimal"
    if v.family == "beit":
        depth = 1 + max(int(k.split(".")[3]) for k in ref if k.startswith("pretrained.model.blocks."))
        assert max(v.hooks) < depth
        side = 2 * (v.input_size // 16) - 1
        assert ref["pretrained.model.blocks.0.attn.relative_position_bias_table"][0] == side * side + 3
        assert not v.square
    else:
        for stage, hook in enumerate(v.hooks):  # the hooked block is the last of its stage
            assert f"pretrained.model.layers.{stage}.blocks.{hook}.norm2.weight" in ref
            assert f"pretrained.model.layers.{stage}.blocks.{hook + 1}.norm2.weight" not in ref
        assert ref["pretrained.model.layers.0.blocks.1.attn_mask"] == [(v.input_size // 4 // 16) ** 2, 256, 256]
        assert v.square


@pytest.mark.parametrize("name", CHECKED)
def test_state_dict_names_and_shapes_equal_the_official_checkpoint(name):
    with torch.device("meta"):
        model = MidasDPT(name)
    ours = [(k, list(t.shape)) for k, t in model.state_dict().items()]
    assert ours == list(reference_keys()[name].items())


@pytest.mark.parametrize("name", CHECKED)
def test_official_key_list_loads_strictly(name):
    sd = _reference_state_dict(name)
    # BEiT: load into the meta device (no allocation); Swin-V2 checks its masks, which need real buffers
    model = _fast_skeleton(name) if name == "dpt_swin2_tiny_256" else _meta_model(name)
    result = model.load_state_dict(sd, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    probe = next(k for k in sd if k.endswith("qkv.weight"))
    assert torch.all(model.state_dict()[probe] == 0.5)


def test_wrong_relative_position_index_is_rejected(tmp_path):
    sd = _reference_state_dict("dpt_beit_base_384")
    bad = sd["pretrained.model.blocks.3.attn.relative_position_index"].clone()
    bad[5, 7] += 1
    sd["pretrained.model.blocks.3.attn.relative_position_index"] = bad
    with pytest.raises(RuntimeError, match="blocks.3.attn.relative_position_index"):
        _meta_model("dpt_beit_base_384").load_state_dict(sd, assign=True)
    path = tmp_path / "bad_index.pt"
    torch.save(sd, path)
    with pytest.raises(BadInputError, match="relative_position_index") as err:
        load_midas("dpt_beit_base_384", path)
    assert str(path) in str(err.value) and "dpt_beit_base_384" in str(err.value)


def test_state_dict_round_trips(swin2_tiny):
    """Exported (official) names map back onto the same timm parameters: Swin-V2 renames downsample layers."""
    copy = _fast_skeleton("dpt_swin2_tiny_256")
    copy.load_state_dict(swin2_tiny.state_dict())
    for (k, a), b in zip(swin2_tiny.state_dict().items(), copy.state_dict().values()):
        assert torch.equal(a, b), k


def test_loader_accepts_a_training_checkpoint_dict(tmp_path):
    path = tmp_path / "dpt_swin2_tiny_256.pt"
    torch.save({"model": _reference_state_dict("dpt_swin2_tiny_256"), "optimizer": {}}, path)
    model = load_midas("dpt_swin2_tiny_256", path)
    assert not model.training
    assert torch.all(model.scratch.output_conv[0].weight == 0.5)


@pytest.mark.parametrize("window", [(24, 24), (32, 32), (4, 6), (6, 4), (1, 3)])
def test_relative_position_index_equals_timm(window):
    assert torch.equal(beit_relative_position_index(window), gen_relative_position_index(window))


# ---------------------------------------------------------------------------------------------------------------
# Input transform
# ---------------------------------------------------------------------------------------------------------------

def test_constrain_to_multiple_of_rounds_then_floors_above_max_and_ceils_below_min():
    assert constrain_to_multiple_of(383.9) == 384
    assert constrain_to_multiple_of(48) == 64 and constrain_to_multiple_of(80) == 64  # numpy half-to-even
    assert constrain_to_multiple_of(90, max_val=64) == 64
    assert constrain_to_multiple_of(10, min_val=32) == 32


@pytest.mark.parametrize("name, image_hw, net_hw", [
    ("dpt_beit_base_384", (480, 640), (384, 512)),   # scale 0.8 (height) is closer to 1 than 0.6
    ("dpt_beit_large_512", (427, 640), (512, 768)),   # 2:3 image, the log line "Input resized to 512x768"
    ("dpt_beit_large_512", (1000, 1500), (512, 768)),
    ("dpt_beit_large_512", (768, 512), (768, 512)),   # scale 1 keeps the image as it is
    ("dpt_beit_large_512", (300, 1000), (160, 512)),  # 0.512 (width) beats 1.71; height 153.6 rounds to 160
    ("dpt_swin2_tiny_256", (480, 640), (256, 256)),   # square-forced
])
def test_minimal_resize_gives_midas_sizes(name, image_hw, net_hw):
    assert network_input_size(name, *image_hw) == net_hw


def test_prepare_input_is_bicubic_resize_of_unit_range_then_minus_one_to_one():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    x = prepare_input("dpt_beit_base_384", image)
    h, w = network_input_size("dpt_beit_base_384", 48, 40)
    expected = cv2.resize(image / 255.0, (w, h), interpolation=cv2.INTER_CUBIC) * 2 - 1
    assert x.dtype == np.float32 and x.shape == (3, h, w)
    np.testing.assert_allclose(x, expected.transpose(2, 0, 1), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Agreement with the official computation (independent reference)
# ---------------------------------------------------------------------------------------------------------------

def midas_rel_pos_table(table, old_window, new_window):
    """MiDaS backbones/beit.py _get_rel_pos_bias: bilinear resize of the (2w-1)x(2h-1) part, cls rows kept."""
    old_h, old_w = 2 * old_window[0] - 1, 2 * old_window[1] - 1
    new_h, new_w = 2 * new_window[0] - 1, 2 * new_window[1] - 1
    sub = table[: old_h * old_w].reshape(1, old_w, old_h, -1).permute(0, 3, 1, 2)
    sub = F.interpolate(sub, size=(new_h, new_w), mode="bilinear")
    return torch.cat([sub.permute(0, 2, 3, 1).reshape(new_h * new_w, -1), table[old_h * old_w:]])


def _conv(p, name, x, **kw):
    return F.conv2d(x, p[name + ".weight"], p.get(name + ".bias"), **kw)


def reference_reassemble(p, k, tokens, grid):
    pre = f"pretrained.act_postprocess{k}."
    patches = tokens[:, 1:]
    y = torch.cat([patches, tokens[:, :1].expand_as(patches)], dim=-1)
    y = F.gelu(F.linear(y, p[pre + "0.project.0.weight"], p[pre + "0.project.0.bias"]))
    y = _conv(p, pre + "3", y.transpose(1, 2).reshape(y.shape[0], -1, *grid))
    if k in (1, 2):
        y = F.conv_transpose2d(y, p[pre + "4.weight"], p[pre + "4.bias"], stride=4 if k == 1 else 2)
    elif k == 4:
        y = _conv(p, pre + "4", y, stride=2, padding=1)
    return y


def reference_dpt_head(p, feats):
    def rcu(x, pre):
        h = _conv(p, pre + "conv1", F.relu(x), padding=1)
        return x + _conv(p, pre + "conv2", F.relu(h), padding=1)

    def fuse(k, x, skip=None, size=None):
        pre = f"scratch.refinenet{k}."
        if skip is not None:
            x = x + rcu(skip, pre + "resConfUnit1.")
        x = rcu(x, pre + "resConfUnit2.")
        x = F.interpolate(x, size=size, scale_factor=None if size else 2, mode="bilinear", align_corners=True)
        return _conv(p, pre + "out_conv", x)

    r = [_conv(p, f"scratch.layer{k}_rn", f, padding=1) for k, f in enumerate(feats, start=1)]
    x = fuse(4, r[3], size=r[2].shape[2:])
    x = fuse(3, x, r[2], size=r[1].shape[2:])
    x = fuse(2, x, r[1], size=r[0].shape[2:])
    x = fuse(1, x, r[0])
    x = F.interpolate(_conv(p, "scratch.output_conv.0", x, padding=1), scale_factor=2, mode="bilinear",
                      align_corners=True)
    x = F.relu(_conv(p, "scratch.output_conv.2", x, padding=1))
    return F.relu(_conv(p, "scratch.output_conv.4", x))[:, 0]


def reference_beit_dpt(p, name, x):
    v = MIDAS_VARIANTS[name]
    grid = (x.shape[-2] // 16, x.shape[-1] // 16)
    native = (v.input_size // 16, v.input_size // 16)
    beit = _timm_skeleton(v.backbone, img_size=tuple(x.shape[-2:]))
    weights = {}
    for k, t in p.items():
        if not k.startswith("pretrained.model.") or k.endswith("relative_position_index"):
            continue
        k = k[len("pretrained.model."):]
        weights[k] = midas_rel_pos_table(t, native, grid) if k.endswith("relative_position_bias_table") else t
    beit.load_state_dict(weights, assign=True)
    tokens = beit.patch_embed(x)
    tokens = torch.cat([beit.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
    feats = []
    for i, block in enumerate(beit.blocks):
        tokens = block(tokens)
        if i in v.hooks:
            feats.append(reference_reassemble(p, len(feats) + 1, tokens, grid))
    return feats, reference_dpt_head(p, feats)


def _assert_close(ours, ref):
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


@pytest.mark.parametrize("hw", [(64, 64), (64, 96)], ids=["square", "non_square"])
def test_beit_matches_official_computation(beit_base, hw):
    x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref_feats, ref_depth = reference_beit_dpt(beit_base.state_dict(), "dpt_beit_base_384", x)
        feats, depth = beit_base.pretrained(x), beit_base(x)
    for ours, ref in zip(feats, ref_feats):
        _assert_close(ours, ref)
    assert depth.shape == (2, *hw) and (depth > 0).float().mean() > 0.2
    _assert_close(depth, ref_depth)


def test_swin2_hooks_match_timm_stage_outputs(swin2_tiny):
    """Swin-V2 needs no patching: the hooked features must equal timm's own stage outputs for the same weights,
    converted from the official layout by timm's own filter. (The DPT head they feed is checked above; running it
    at 256x256 would triple this file's CPU time.)"""
    p = swin2_tiny.state_dict()
    swin = _timm_skeleton("swinv2_tiny_window16_256")
    backbone = {k[len("pretrained.model."):]: t for k, t in p.items() if k.startswith("pretrained.model.")}
    swin.load_state_dict(timm_swin2_filter(backbone, swin))
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref_feats = swin.forward_intermediates(x, indices=[0, 1, 2, 3], intermediates_only=True)
        feats = swin2_tiny.pretrained(x)
    assert [f.shape[1:] for f in feats] == [(c, 64 // 2 ** k, 64 // 2 ** k) for k, c in enumerate((96, 192, 384, 768))]
    for ours, ref in zip(feats, ref_feats):
        _assert_close(ours, ref)


def test_rel_pos_table_interpolation_is_midas_rule():
    table = torch.randn(47 * 47 + 3, 4, generator=torch.Generator().manual_seed(5))
    for window in [(4, 6), (6, 4), (24, 24), (32, 16)]:
        torch.testing.assert_close(interpolate_rel_pos_table(table, (24, 24), window),
                                   midas_rel_pos_table(table, (24, 24), window))


# ---------------------------------------------------------------------------------------------------------------
# Prediction API
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture
def small_beit(beit_base, monkeypatch):
    """beit_base whose transform targets 64 px instead of 384, to keep CPU tests fast."""
    monkeypatch.setattr(beit_base, "variant", dataclasses.replace(beit_base.variant, input_size=64))
    return beit_base


def test_predict_returns_float32_at_image_size_for_grey_odd_sized_images(small_beit):
    rng = np.random.default_rng(5)
    grey = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    for image in (cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB), grey):
        depth = predict_inverse_depth(small_beit, image)
        assert depth.shape == (37, 53) and depth.dtype == np.float32 and np.isfinite(depth).all()


def test_batch_groups_equal_network_sizes_and_keeps_order(small_beit):
    rng = np.random.default_rng(6)
    images = [rng.integers(0, 256, hw + (3,), dtype=np.uint8) for hw in [(48, 64), (70, 50), (48, 64), (50, 66)]]
    assert len({network_input_size(small_beit.variant, *im.shape[:2]) for im in images}) == 2
    batched = predict_inverse_depth_batch(small_beit, images, batch_size=2)
    assert [d.shape for d in batched] == [im.shape[:2] for im in images]
    assert all(d.dtype == np.float32 for d in batched)
    for i in (1, 3):  # one image of each group; the (64, 64) group ran as two batches
        single = predict_inverse_depth(small_beit, images[i])
        np.testing.assert_allclose(batched[i], single, rtol=1e-4, atol=1e-4 * np.abs(single).max())


def test_predict_rejects_non_rgb_input(small_beit):
    with pytest.raises(ValueError, match="RGB"):
        predict_inverse_depth(small_beit, np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        predict_inverse_depth(small_beit, np.zeros((8, 8, 3), np.float32))


# ---------------------------------------------------------------------------------------------------------------
# Loader errors name the file, the expected model and what is wrong
# ---------------------------------------------------------------------------------------------------------------

def test_missing_checkpoint(tmp_path):
    path = tmp_path / "dpt_beit_large_512.pt"
    with pytest.raises(FileNotFoundError) as err:
        load_midas("dpt_beit_large_512", path)
    assert str(path) in str(err.value) and "dpt_beit_large_512" in str(err.value)


@pytest.mark.parametrize("kind", ["truncated", "text"])
def test_unreadable_checkpoint(tmp_path, kind):
    path = tmp_path / "broken.pt"
    if kind == "truncated":
        torch.save({"scratch.layer1_rn.weight": torch.zeros(256, 96, 3, 3)}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_text("<html>404 Not Found</html>")
    with pytest.raises(BadInputError) as err:
        load_midas("dpt_swin2_tiny_256", path)
    message = str(err.value)
    assert str(path) in message and "dpt_swin2_tiny_256" in message and "torch checkpoint" in message


def test_checkpoint_of_another_variant_is_named(tmp_path):
    path = tmp_path / "swin2.pt"
    torch.save(_reference_state_dict("dpt_swin2_tiny_256"), path)
    with pytest.raises(BadInputError) as err:
        load_midas("dpt_beit_base_384", path)
    message = str(err.value)
    assert str(path) in message and "'dpt_beit_base_384'" in message
    assert "missing keys" in message and "unexpected keys" in message
    assert "looks like a 'dpt_swin2_tiny_256' checkpoint" in message


def test_shape_mismatch_is_reported(tmp_path):
    path = tmp_path / "large.pt"
    torch.save(_reference_state_dict("dpt_beit_large_512"), path)
    with pytest.raises(BadInputError) as err:
        load_midas("dpt_beit_base_384", path)
    message = str(err.value)
    assert "shape mismatches" in message and "pretrained.model.cls_token [1, 1, 1024] vs model [1, 1, 768]" in message
    assert "unexpected keys" in message and "looks like a 'dpt_beit_large_512'" in message
