"""Training loop, datasets, presets, resume, evaluation and report on tiny SYN-like stores (CPU, seconds)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from data.samplers import uniform_indices
from data.store import ShardWriter
from model.evaluate import accuracy_summary, evaluate_run
from model.i3d import STEM
from model.memory_bank import read_bank_snapshot
from model.report import write_report
from model.trainer import (PAPER_PRESETS, SYN_PRESET, VARIANTS, TrainConfig, build_streams, load_checkpoint,
                           read_metrics, train)
from model.video_data import EpochSampler, EvalClipDataset, SourceClipDataset, TargetPaceDataset

SIZE = 36
TINY = dict(init="random", width_mult=0.125, crop_size=32, eval_frames=16, batch_size=3, lr=0.01, bank_size=2,
            num_paces=3, threads=1, log=None)


def _coded_video(n_frames, frame_step, flow_step, cls, rng):
    """Frames whose green channel encodes the frame index and red channel the column; flows whose x encodes
    the flow index and y the column, so crops, flips and indices can be read back."""
    cols = np.arange(SIZE)
    frames = np.zeros((n_frames, SIZE, SIZE, 3), np.uint8)
    frames[..., 0] = (6 * cols)[None, None, :]
    frames[..., 1] = (frame_step * np.arange(n_frames))[:, None, None]
    frames[..., 2] = np.clip(60 * cls + rng.integers(0, 40, (n_frames, SIZE, SIZE)), 0, 255)
    flow = np.zeros((n_frames - 1, SIZE, SIZE, 2), np.float32)
    flow[..., 0] = (flow_step * np.arange(1, n_frames))[:, None, None]
    flow[..., 1] = (cols / 4.0)[None, None, :]
    return frames, flow


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    rng = np.random.default_rng(0)
    src, tgt = root / "source.h5", root / "target.h5"
    with ShardWriter(src, stage="source", benchmark="TINY", params={}) as w:
        for c in range(3):
            for i in range(3):
                frames, flow = _coded_video(16, 12, 1.0, c, rng)
                w.add(f"s/{c}/{i}", label=c, frames=frames, flow=flow)
    with ShardWriter(tgt, stage="target", benchmark="TINY", params={}) as w:
        for c in range(3):
            for i in range(2):
                frames, flow = _coded_video(32, 7, 0.5, c, rng)
                w.add(f"t/{c}/{i}", label=c, frames=frames, flow=flow)
    return str(src), str(tgt)


# -- datasets ------------------------------------------------------------------------------------------------

def _frame_index(rgb, step):
    return torch.round((rgb[1].mean(dim=(1, 2)) + 1) * 127.5 / step).long()


def test_source_clip_shares_crop_and_flip_and_negates_flow_x(stores):
    ds = SourceClipDataset(stores[0], num_frames=16, crop_size=24, seed=3)
    flips = 0
    for key in range(8):
        item = ds[key]
        rgb, flow = item["rgb"], item["flow"]
        assert rgb.shape == (3, 16, 24, 24) and flow.shape == (2, 16, 24, 24)
        assert rgb.min() >= -1 and rgb.max() <= 1 and flow.abs().max() <= 1
        rgb_col = (rgb[0] + 1) * 127.5 / 6          # column read from RGB
        flow_col = flow[1] * 20 * 4                  # column read from the flow's y component
        assert (rgb_col - flow_col).abs().mean() < 1.0  # same crop
        flipped = bool(rgb_col[0, 0, 0] > rgb_col[0, 0, -1])
        flips += flipped
        fx = flow[0, :, 0, 0] * 20                   # flow x = flow index + 1, negated when flipped
        expected = torch.tensor([1.0 + min(t, 14) for t in range(16)])  # 15 flows padded with the last
        assert torch.allclose(fx, -expected if flipped else expected, atol=0.1)
        assert _frame_index(rgb, 12).tolist() == list(range(16))
    assert 0 < flips < 8


def test_source_clips_depend_on_key_and_epoch_only(stores):
    a = SourceClipDataset(stores[0], crop_size=24, seed=1)
    b = SourceClipDataset(stores[0], crop_size=24, seed=1)
    assert torch.equal(a[5]["rgb"], b[5]["rgb"])
    b.set_epoch(1)
    assert not torch.equal(a[5]["rgb"], b[5]["rgb"])


def test_pace_clips_step_by_their_pace_and_label_pace_minus_one(stores):
    ds = TargetPaceDataset(stores[1], num_frames=16, crop_size=24, num_paces=4, seed=0)
    seen = set()
    for key in range(40):
        item = ds[key]
        label = int(item["pace_label"])
        pace = label + 1
        seen.add(label)
        idx = _frame_index(item["rgb"], 7).tolist()
        steps = np.diff(idx)
        # consecutive indices advance by the pace, except where the looping sampler wraps to the start
        assert all(s == pace or s < 0 for s in steps), (pace, idx)
        assert sum(s < 0 for s in steps) <= math.ceil(16 * pace / 32) + 1
    assert seen == {0, 1, 2, 3}


def test_eval_clip_samples_uniform_frames_and_flows_clamped_to_the_last(stores):
    ds = EvalClipDataset(stores[1], num_frames=32, crop_size=32)
    item = ds[0]
    assert item["rgb"].shape == (3, 32, 32, 32)
    assert _frame_index(item["rgb"], 7).tolist() == uniform_indices(32, 32).tolist()
    fx = item["flow"][0, :, 0, 0] * 20
    expected = 0.5 * (np.minimum(np.arange(32), 30) + 1)
    assert np.allclose(fx.numpy(), expected, atol=0.1)
    bank_clip = ds.bank_flow_clip(0, 16)
    assert bank_clip.shape == (2, 16, 32, 32)
    assert np.allclose(bank_clip[0, :, 0, 0].numpy() * 20, 0.5 * (np.arange(0, 32, 2) + 1), atol=0.1)


def test_epoch_sampler_shards_and_repeats_deterministically():
    s = EpochSampler(5, 12, seed=1)
    keys = s.keys()
    assert len(keys) == 12 and sorted(k % 5 for k in keys[:5]) == [0, 1, 2, 3, 4]
    assert keys == EpochSampler(5, 12, seed=1).keys()
    s.set_epoch(1)
    assert s.keys() != keys
    shards = [EpochSampler(5, 12, seed=1, rank=r, world_size=2).keys() for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 6 and sorted(shards[0] + shards[1]) == sorted(keys)


# -- presets and models -----------------------------------------------------------------------------------------

def test_variant_presets_differ_as_specified():
    assert VARIANTS["SO_RGB"] == {"use_flow": False, "use_bank": False, "use_pace": False}
    assert VARIANTS["SO_RGB_FLOW"] == {"use_flow": True, "use_bank": False, "use_pace": False}
    assert VARIANTS["SO_RGB_FLOW_CFB"] == {"use_flow": True, "use_bank": True, "use_pace": False}
    assert VARIANTS["FULL"] == {"use_flow": True, "use_bank": True, "use_pace": True}
    built = {v: build_streams(TrainConfig(variant=v, init="random", width_mult=0.125), 4) for v in VARIANTS}
    assert built["SO_RGB"][1] is None and built["SO_RGB"][2] is None
    assert built["SO_RGB_FLOW"][1].in_channels == 2 and built["SO_RGB_FLOW"][2] is None
    assert built["FULL"][2] is not None and built["FULL"][2].num_paces == 5
    rgb = built["FULL"][0]
    assert rgb.logits.conv3d.out_channels == 4
    # the paper freezes the stem of Kinetics-pretrained streams; random filters stay trainable unless asked
    assert all(p.requires_grad for name in STEM for p in getattr(rgb, name).parameters())
    frozen, flow, _ = build_streams(TrainConfig(variant="SO_RGB_FLOW", init="random", width_mult=0.125,
                                                freeze_stem=True), 4)
    for net in (frozen, flow):
        for name in STEM:
            assert not any(p.requires_grad for p in getattr(net, name).parameters())
        assert all(p.requires_grad for p in net.Mixed_3b.parameters())


def test_paper_presets_follow_the_protocol():
    e2h = TrainConfig(**PAPER_PRESETS["E2H"])
    assert (e2h.lr, e2h.batch_size, e2h.epochs, e2h.lambda1, e2h.lambda2) == (0.05, 16, 60, 1.0, 0.2)
    assert e2h.milestones() == [30, 40] and e2h.warmup_epochs == 10 and e2h.bank_size == 60
    assert TrainConfig(**PAPER_PRESETS["B2U"]).milestones() == [15, 20]
    s2u = PAPER_PRESETS["S2U"]
    assert (s2u["lr"], s2u["batch_size"], s2u["epochs"], s2u["lambda1"], s2u["lambda2"]) == (0.015, 32, 20, 1.0, 0.01)
    assert SYN_PRESET["init"] == "random"
    TrainConfig(**SYN_PRESET)


def test_pretrained_init_without_weights_names_the_setting():
    with pytest.raises(FileNotFoundError, match="rgb_weights"):
        build_streams(TrainConfig(variant="SO_RGB", rgb_weights="/nonexistent/rgb_imagenet.pt"), 3)


def test_config_rejects_unknown_names():
    with pytest.raises(ValueError, match="variant"):
        TrainConfig(variant="CFB_ONLY")
    with pytest.raises(ValueError, match="da"):
        TrainConfig(da="dann")


# -- the loop ------------------------------------------------------------------------------------------------

def test_resume_after_a_crash_ends_with_the_same_weights_as_an_uninterrupted_run(stores, tmp_path):
    kw = dict(TINY, variant="FULL", epochs=3, warmup_epochs=1, aggregation="simw_sum_top5", da="mcc", lambda3=0.1)
    full = train(tmp_path / "a", *stores, **kw)

    class Crash(RuntimeError):
        pass

    def crash(epoch, row):
        if epoch == 1:
            raise Crash

    with pytest.raises(Crash):
        train(tmp_path / "b", *stores, on_epoch_end=crash, **kw)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["epoch"] == 1
    assert not (tmp_path / "b" / "result.json").exists()
    resumed = train(tmp_path / "b", *stores, **kw)
    a, b = load_checkpoint(tmp_path / "a" / "checkpoint.pt"), load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    for part in ("rgb", "flow", "pace_head"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    assert resumed["accuracy"] == full["accuracy"]
    assert resumed["per_class_accuracy"] == full["per_class_accuracy"]

    # what every epoch materialised
    out = tmp_path / "a"
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 4 and rows[0].startswith("epoch,lr,loss")
    assert sorted(p.name for p in (out / "bank").iterdir()) == ["epoch_001.h5", "epoch_002.h5"]
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["epoch"] == 2 and ckpt["config"]["variant"] == "FULL" and "optimizer" in ckpt and "rng" in ckpt
    assert json.loads((out / "result.json").read_text())["accuracy"] == full["accuracy"]
    assert not list(out.glob(".*tmp*"))
    # a finished run is not trained again
    assert train(out, *stores, **kw)["accuracy"] == full["accuracy"]


def test_oracle_bank_holds_only_true_classes_and_pseudo_bank_follows_predictions(stores, tmp_path):
    kw = dict(TINY, variant="SO_RGB_FLOW_CFB", epochs=2, warmup_epochs=1)
    snaps, rows = {}, {}
    for name in ("oracle", "pseudo"):
        train(tmp_path / name, *stores, bank_labels=name, **kw)
        snaps[name] = read_bank_snapshot(tmp_path / name / "bank" / "epoch_001.h5")
        rows[name] = read_metrics(tmp_path / name / "metrics.csv")[1]
    oracle, pseudo = snaps["oracle"], snaps["pseudo"]
    assert oracle["attrs"]["bank_labels"] == "oracle" and pseudo["attrs"]["bank_labels"] == "pseudo"
    in_bank = oracle["in_bank"].astype(bool)
    assert in_bank.sum() == 3 * 2  # every class fills its capacity (2) from its own videos
    assert np.array_equal(oracle["pseudo_labels"], oracle["labels"]) and float(rows["oracle"]["bank_precision"]) == 1
    # the method's bank is filled by the predictions, right or wrong: the snapshot's classes are those whose
    # agreement with the truth the metrics report as pseudo-label accuracy
    assert np.isclose((pseudo["pseudo_labels"] == pseudo["labels"]).mean(), float(rows["pseudo"]["pseudo_acc"]))
    with pytest.raises(ValueError, match="bank_labels"):
        TrainConfig(bank_labels="truth")


def test_resume_refuses_a_changed_configuration(stores, tmp_path):
    kw = dict(TINY, variant="SO_RGB", epochs=2, warmup_epochs=0)
    train(tmp_path / "r", *stores, stop_after_epoch=0, **kw)
    with pytest.raises(ValueError, match="lr"):
        train(tmp_path / "r", *stores, **{**kw, "lr": 0.5})


def test_evaluate_and_report_write_their_files(stores, tmp_path):
    eval_dirs = []
    for variant in ("SO_RGB", "SO_RGB_FLOW_CFB"):
        for seed in (0, 1):
            run = tmp_path / f"{variant}_{seed}"
            train(run, *stores, **dict(TINY, variant=variant, seed=seed, epochs=1, warmup_epochs=0))
            m = evaluate_run(run, stores[1], out_dir=run / "eval", source_frames=stores[0],
                             class_names=["a", "b", "c"])
            assert m["streams"] == ("rgb" if variant == "SO_RGB" else "rgb+flow")
            assert len(m["per_class_accuracy"]) == 3 and np.array(m["confusion"]).sum() == 6
            assert (run / "eval" / "predictions.csv").read_text().count("\n") == 7
            eval_dirs.append(run / "eval")
    rep = write_report(eval_dirs, tmp_path / "report", benchmark="TINY")
    names = sorted(p.name for p in (tmp_path / "report").iterdir())
    assert names == ["confusion_SO_RGB.png", "confusion_SO_RGB_FLOW_CFB.png", "report.md", "results.csv",
                     "tsne_SO_RGB_FLOW_CFB.png"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| SO_RGB |" in md and "+-" in md and "| a |" in md
    assert rep["summary"]["SO_RGB"]["seeds"] == [0, 1]
    assert (tmp_path / "report" / "results.csv").read_text().count("\n") == 5


def test_accuracy_summary_counts_per_class():
    s = accuracy_summary([0, 1, 1, 2], [0, 1, 2, 2], 4)
    assert s["accuracy"] == 0.75
    assert s["confusion"].tolist()[2] == [0, 1, 1, 0]
    assert s["per_class_accuracy"][:3].tolist() == [1.0, 1.0, 0.5] and np.isnan(s["per_class_accuracy"][3])


def test_torchrun_with_two_gloo_processes_trains_and_only_rank0_writes(stores, tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    sets = ["init=random", "width_mult=0.125", "crop_size=32", "eval_frames=16", "batch_size=2", "lr=0.01",
            "bank_size=2", "num_paces=3", "threads=1", "variant=FULL", "epochs=2", "warmup_epochs=1"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "model.trainer",
           str(out), "--source-frames", stores[0], "--target-frames", stores[1], "--set", *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["epochs"] == 2 and 0 <= result["accuracy"] <= 1
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["epoch"] == 1 and not any(k.startswith("module.") for k in ckpt["rgb"])
    assert (out / "bank" / "epoch_001.h5").exists()
    assert (out / "metrics.csv").read_text().count("\n") == 3
