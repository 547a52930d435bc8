"""Inception-I3D: published key names, checkpoint loading, equivalence with the public forward, shapes."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model.i3d import STEM, InceptionI3d, checkpoint_filter_fn, load_i3d, load_pretrained

torch.set_num_threads(1)

REFERENCE_KEYS = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "i3d_state_dict_keys.json"
CHANNELS = {"rgb": 3, "flow": 2}


@pytest.fixture(scope="module")
def reference_shapes():
    if not REFERENCE_KEYS.is_file():
        pytest.fail(f"missing {REFERENCE_KEYS}")
    return json.loads(REFERENCE_KEYS.read_text())


def published_state_dict(shapes):
    """Random tensors with exactly the published checkpoint keys (no num_batches_tracked, like PyTorch 0.3)."""
    gen = torch.Generator().manual_seed(0)
    return {k: torch.rand(s, generator=gen) + 0.5 for k, s in shapes.items() if not k.endswith("num_batches_tracked")}


# ---------------------------------------------------------------- independent reference forward
# The public pytorch_i3d.py network written out as plain functional calls on a state_dict; it shares no
# code with model/i3d.py. Kernel sizes come from the weights, strides from this list.
def _ref_pad(x, kernel, stride):
    pads = []
    for n, k, s in zip(x.shape[2:], kernel, stride):
        total = max(k - s, 0) if n % s == 0 else max(k - n % s, 0)
        pads = [total // 2, total - total // 2] + pads  # F.pad wants the last dim first
    return F.pad(x, pads)


def _ref_unit(x, sd, prefix, stride=(1, 1, 1)):
    w = sd[prefix + ".conv3d.weight"]
    x = F.conv3d(_ref_pad(x, w.shape[2:], stride), w, sd.get(prefix + ".conv3d.bias"), stride)
    if prefix + ".bn.weight" not in sd:  # logits: no BN, no ReLU
        return x
    x = F.batch_norm(x, sd[prefix + ".bn.running_mean"], sd[prefix + ".bn.running_var"],
                     sd[prefix + ".bn.weight"], sd[prefix + ".bn.bias"], training=False, eps=1e-3)
    return F.relu(x)


def _ref_maxpool(x, kernel, stride):
    return F.max_pool3d(_ref_pad(x, kernel, stride), kernel, stride)


def _ref_mixed(x, sd, p):
    return torch.cat([_ref_unit(x, sd, p + ".b0"),
                      _ref_unit(_ref_unit(x, sd, p + ".b1a"), sd, p + ".b1b"),
                      _ref_unit(_ref_unit(x, sd, p + ".b2a"), sd, p + ".b2b"),
                      _ref_unit(_ref_maxpool(x, (3, 3, 3), (1, 1, 1)), sd, p + ".b3b")], dim=1)


def reference_forward(sd, x, st_i2v=False, avg_kernel_hw=None):
    """Public I3D forward; ST-I2V changes the temporal strides of pools 4a/5a and the avg-pool kernel."""
    t = 1 if st_i2v else 2
    x = _ref_unit(x, sd, "Conv3d_1a_7x7", (2, 2, 2))
    x = _ref_maxpool(x, (1, 3, 3), (1, 2, 2))
    x = _ref_unit(x, sd, "Conv3d_2b_1x1")
    x = _ref_unit(x, sd, "Conv3d_2c_3x3")
    x = _ref_maxpool(x, (1, 3, 3), (1, 2, 2))
    x = _ref_mixed(_ref_mixed(x, sd, "Mixed_3b"), sd, "Mixed_3c")
    x = _ref_maxpool(x, (3, 3, 3), (t, 2, 2))
    for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
        x = _ref_mixed(x, sd, name)
    x = _ref_maxpool(x, (2, 2, 2), (t, 2, 2))
    x = _ref_mixed(_ref_mixed(x, sd, "Mixed_5b"), sd, "Mixed_5c")
    # Public: AvgPool3d([2, 7, 7], stride 1); tiny test inputs have a smaller map, pooled whole.
    x = F.avg_pool3d(x, (t,) + (avg_kernel_hw or tuple(x.shape[3:])), stride=1)
    return _ref_unit(x, sd, "logits").squeeze(3).squeeze(3)


def randomised(model, seed=0):
    """Eval-mode model with non-trivial BN statistics and affine parameters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith(("running_var", "bn.weight")):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif name.endswith(("running_mean", "bn.bias")):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
    return model.eval()


# ---------------------------------------------------------------- published names and shapes
@pytest.mark.parametrize("modality", ["rgb", "flow"])
@pytest.mark.parametrize("variant", ["kinetics", "st_i2v"])
def test_state_dict_names_and_shapes_equal_public_i3d(reference_shapes, modality, variant):
    with torch.device("meta"):  # names and shapes only
        model = InceptionI3d(num_classes=400, in_channels=CHANNELS[modality], temporal_variant=variant)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == reference_shapes[modality]
    assert list(ours) == list(reference_shapes[modality])  # same order as pytorch_i3d.py too


# ---------------------------------------------------------------- loading checkpoints
@pytest.fixture(scope="module")
def published_files(reference_shapes, tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    files = {}
    for modality in CHANNELS:
        sd = published_state_dict(reference_shapes[modality])
        files[modality] = root / f"{modality}_imagenet.pt"
        torch.save(sd, files[modality])
    return files


@pytest.mark.parametrize("modality", ["rgb", "flow"])
def test_published_checkpoint_loads(published_files, modality):
    model = load_i3d(published_files[modality], in_channels=CHANNELS[modality])
    saved = torch.load(published_files[modality], weights_only=True)
    for key in ("Conv3d_1a_7x7.conv3d.weight", "Mixed_5c.b3b.bn.running_var", "logits.conv3d.bias"):
        assert torch.equal(model.state_dict()[key], saved[key])


def test_pretrained_streams_of_the_trainer_load_the_checkpoints_with_a_frozen_stem(published_files):
    from model.trainer import TrainConfig, build_streams

    cfg = TrainConfig(variant="SO_RGB_FLOW", rgb_weights=str(published_files["rgb"]),
                      flow_weights=str(published_files["flow"]))
    rgb, flow, _ = build_streams(cfg, num_classes=13)
    for net, modality in ((rgb, "rgb"), (flow, "flow")):
        saved = torch.load(published_files[modality], weights_only=True)
        assert torch.equal(net.state_dict()["Mixed_4f.b0.conv3d.weight"], saved["Mixed_4f.b0.conv3d.weight"])
        assert net.logits.conv3d.out_channels == 13
        for name in STEM:
            assert not any(q.requires_grad for q in getattr(net, name).parameters()), (modality, name)
        assert all(q.requires_grad for q in net.Mixed_3b.parameters())


def test_dataparallel_prefix_and_wrapped_checkpoints_load(published_files, tmp_path):
    sd = torch.load(published_files["rgb"], weights_only=True)
    prefixed = {"module." + k: v for k, v in sd.items()}
    assert checkpoint_filter_fn(prefixed) == sd
    for name, obj in [("prefixed.pt", prefixed), ("wrapped.pt", {"state_dict": prefixed}), ("model.pt", {"model": sd})]:
        torch.save(obj, tmp_path / name)
        model = load_i3d(tmp_path / name)
        assert torch.equal(model.Mixed_3b.b0.conv3d.weight, sd["Mixed_3b.b0.conv3d.weight"])


def test_replace_logits_after_loading(published_files):
    model = load_i3d(published_files["flow"], in_channels=2, num_classes=13, temporal_variant="st_i2v")
    assert model.logits.conv3d.weight.shape == (13, 1024, 1, 1, 1) and model.num_classes == 13


def test_truncated_file_names_the_file(published_files, tmp_path):
    bad = tmp_path / "truncated_rgb.pt"
    bad.write_bytes(published_files["rgb"].read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated_rgb.pt.*truncated or not a torch"):
        load_i3d(bad)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.pt"):
        load_i3d(text)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_i3d(tmp_path / "nowhere.pt")


def test_flow_checkpoint_loaded_as_rgb_names_file_and_shapes(published_files):
    with pytest.raises(ValueError, match=r"flow_imagenet.pt.*\(64, 2, 7, 7, 7\).*\(64, 3, 7, 7, 7\)"):
        load_i3d(published_files["flow"], in_channels=3)


def test_wrong_keys_are_listed(published_files, tmp_path):
    sd = torch.load(published_files["rgb"], weights_only=True)
    del sd["Mixed_4d.b2b.bn.running_mean"]
    sd["head.fc.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "other_net.pt")
    with pytest.raises(ValueError, match=r"other_net.pt.*Mixed_4d.b2b.bn.running_mean.*head.fc.weight"):
        load_i3d(tmp_path / "other_net.pt")


def test_width_scaled_model_refuses_published_weights(published_files):
    sd = torch.load(published_files["rgb"], weights_only=True)
    with pytest.raises(ValueError, match="width_mult=1.0"):
        load_pretrained(InceptionI3d(width_mult=0.25), sd, source=published_files["rgb"])


# ---------------------------------------------------------------- numerical equivalence
@pytest.mark.parametrize("variant", ["kinetics", "st_i2v"])
def test_forward_matches_public_formulation_small_input(variant):
    model = randomised(InceptionI3d(temporal_variant=variant)).double()
    x = torch.rand(1, 3, 16, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        ours, features = model.forward_with_features(x)
        expected = reference_forward(model.state_dict(), x, st_i2v=variant == "st_i2v")
    assert ours.shape == expected.shape == (1, 400, 1 if variant == "kinetics" else 8)
    assert features.shape == (1, 1024, ours.shape[2])
    assert expected.std() > 0
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(model.extract_features(x), features)


def test_forward_matches_public_avg_pool_2x7x7_at_224():
    model = randomised(InceptionI3d())
    x = torch.rand(1, 3, 16, 224, 224, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        ours = model(x)
        expected = reference_forward(model.state_dict(), x, avg_kernel_hw=(7, 7))
    assert ours.shape == expected.shape == (1, 400, 1)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- shapes
@pytest.mark.parametrize("variant, frames, out_frames",
                         [("kinetics", 16, 1), ("kinetics", 32, 3), ("kinetics", 64, 7), ("st_i2v", 16, 8)])
def test_per_frame_logit_count_at_224(variant, frames, out_frames):
    with torch.device("meta"):  # shapes only, no arithmetic
        model = InceptionI3d(temporal_variant=variant)
        logits, features = model.forward_with_features(torch.empty(2, 3, frames, 224, 224))
    assert logits.shape == (2, 400, out_frames) and features.shape == (2, 1024, out_frames)


def test_kinetics_variant_rejects_eight_frames_clearly():
    with torch.device("meta"), pytest.raises(ValueError, match="too short"):
        InceptionI3d()(torch.empty(1, 3, 8, 224, 224))


@pytest.mark.parametrize("in_channels", [3, 2])
def test_width_scaled_model_runs_on_small_crops(in_channels):
    torch.manual_seed(0)
    model = InceptionI3d(num_classes=5, in_channels=in_channels, width_mult=0.25)
    assert model.feature_dim == 256
    logits, features = model.forward_with_features(torch.rand(1, in_channels, 16, 56, 56) * 2 - 1)
    assert logits.shape == (1, 5, 1) and features.shape == (1, 256, 1)


# ---------------------------------------------------------------- freezing
def test_freeze_stem_stops_gradients_but_bn_statistics_still_update():
    torch.manual_seed(0)
    model = InceptionI3d(num_classes=4, width_mult=0.125, temporal_variant="st_i2v").freeze_stem().train()
    stem = [model.Conv3d_1a_7x7, model.Conv3d_2b_1x1, model.Conv3d_2c_3x3]
    before = model.Conv3d_1a_7x7.bn.running_mean.clone()
    model(torch.rand(2, 3, 8, 32, 32) * 2 - 1).sum().backward()
    for module in stem:
        for p in module.parameters():
            assert not p.requires_grad and p.grad is None
    assert model.Mixed_3b.b0.conv3d.weight.grad is not None
    assert model.logits.conv3d.weight.grad is not None
    assert not torch.equal(model.Conv3d_1a_7x7.bn.running_mean, before)  # as in the released code
