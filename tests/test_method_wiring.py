"""The method's wiring, checked by value: what the flow stream receives before and after warm-up, how the bank
is refreshed, and how the two streams are fused for pseudo-labels, evaluation files and the report.

Coded stores: every RGB frame is spatially constant with its red channel naming the item and its green channel
the domain; every flow is spatially constant with y naming the item and x the flow index. Stub streams replace
the I3Ds (``model.trainer.build_streams`` is monkeypatched): they read the item back from their input and return
fixed logits and features from tables, so every pseudo-label, confidence, bank member and retrieved flow clip
has a value computed here by hand from the paper's definitions (summed softmax of the two streams, N most
confident per class, flow of class c from the bank of class c).

What the tests rely on in ``model.trainer``: ``build_streams(cfg, num_classes, pretrained=None) -> (rgb, flow,
pace_head)``, the RGB stream's ``forward_with_features(x) -> (B x C x T' logits, B x D x T' features)`` and
``feature_dim``, the flow stream's ``forward(x) -> B x C x T'``, ``train(..., on_epoch_end=...)`` called after
each epoch's evaluation, and the files ``bank/epoch_NNN.h5``, ``result.json``, ``checkpoint.pt``.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from torch import nn

import model.trainer as trainer
from data.flow import dequantize_flow
from data.store import ShardWriter
from model.evaluate import evaluate_run
from model.heads import VideoPaceHead
from model.memory_bank import AGGREGATIONS, read_bank_snapshot
from model.report import write_report

C = 2                   # classes
S = 8                   # frame side = crop side (no crop offsets)
K = 4                   # training clip frames = source video length
E = 8                   # evaluation frames = target video length
N_SOURCE = 3            # source videos per class
N_TARGET = 7            # target videos per class (more than 5: top-5 modes must trim)
D = 6                   # feature width
BANK = 6                # bank capacity per class
NT = C * N_TARGET
NS = C * N_SOURCE

# uint8 quantisation levels of the flow codes (lossless through the PNG flow encoding)
Q_Y_SOURCE = 20 + 5 * np.arange(NS)
Q_Y_TARGET = 150 + 5 * np.arange(NT)
Q_X_SOURCE = 100 + 7 * np.arange(K - 1)
Q_X_TARGET = 60 + 9 * np.arange(E - 1)

CONFIG = dict(init="random", crop_size=S, clip_frames=K, eval_frames=E, batch_size=3, lr=0.01,
              bank_size=BANK, num_paces=3, threads=1, eval_every=1, log=None)


def _deq(q) -> np.ndarray:
    return dequantize_flow(np.asarray(q, np.uint8))


def _flow_value(q) -> torch.Tensor:
    """The trainer's flow tensor value for quantisation level(s) q: pixels / 20 in float32."""
    return torch.from_numpy(np.atleast_1d(_deq(q))) / 20.0


# -- stores -----------------------------------------------------------------------------------------------

def _video(n_frames, red, green, q_y, q_x):
    frames = np.zeros((n_frames, S, S, 3), np.uint8)
    frames[..., 0], frames[..., 1] = red, green
    flow = np.zeros((n_frames - 1, S, S, 2), np.float32)
    flow[..., 0] = _deq(q_x)[:, None, None]
    flow[..., 1] = _deq(q_y)
    return frames, flow


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("coded")
    src, tgt = root / "source.h5", root / "target.h5"
    png = dict(params={}, frame_encoding="png", flow_encoding="png")
    with ShardWriter(src, stage="source", benchmark="CODED", **png) as w:
        for i in range(NS):
            frames, flow = _video(K, 10 + 3 * i, 0, Q_Y_SOURCE[i], Q_X_SOURCE)
            w.add(f"s{i:02d}", label=i // N_SOURCE, frames=frames, flow=flow)
    with ShardWriter(tgt, stage="target", benchmark="CODED", **png) as w:
        for k in range(NT):
            frames, flow = _video(E, 10 + 3 * k, 255, Q_Y_TARGET[k], Q_X_TARGET)
            w.add(f"t{k:02d}", label=k // N_TARGET, frames=frames, flow=flow)
    return str(src), str(tgt)


TARGET_LABELS = np.arange(NT) // N_TARGET
SOURCE_LABELS = np.arange(NS) // N_SOURCE


# -- stub streams ---------------------------------------------------------------------------------------------

class Tables:
    """Fixed stream outputs: per (seed, phase) the RGB and flow logits of every target video; fixed
    features. ``phase`` is the number of finished epochs (set by the test's on_epoch_end)."""

    def __init__(self, seed: int):
        rng = np.random.default_rng(100 + seed)
        self.rgb = rng.normal(0, 1.5, (4, NT, C)).astype(np.float32)
        self.flow = rng.normal(0, 1.5, (4, NT, C)).astype(np.float32)
        self.target_features = rng.normal(0, 1, (NT, D)).astype(np.float32)
        self.source_features = rng.normal(0, 1, (NS, D)).astype(np.float32)
        self.phase = 0
        self.flow_inputs: list[tuple[int, list[int], torch.Tensor]] = []  # (epoch, source items, flow batch)
        self.last_source: list[int] = []

    def fused(self, phase, with_flow=True):
        """Summed softmax of the two streams (numpy, float64), its argmax and max."""
        def softmax(z):
            e = np.exp(z - z.max(1, keepdims=True))
            return e / e.sum(1, keepdims=True)
        scores = softmax(self.rgb[phase].astype(np.float64))
        if with_flow:
            scores = scores + softmax(self.flow[phase].astype(np.float64))
        return scores, scores.argmax(1), scores.max(1)


def _decode_rgb(x):
    """Per sample: (domain 'source'/'target', item index) from the coded red and green channels."""
    red = torch.round((x[:, 0].mean(dim=(1, 2, 3)) + 1) * 127.5).long()
    green = torch.round((x[:, 1].mean(dim=(1, 2, 3)) + 1) * 127.5).long()
    return ["target" if g > 127 else "source" for g in green.tolist()], ((red - 10) // 3).tolist()


class StubRGB(nn.Module):
    def __init__(self, tables: Tables):
        super().__init__()
        self.tables, self.feature_dim = tables, D
        self.zero = nn.Parameter(torch.zeros(()))  # something to optimise; always multiplied by 0

    def forward_with_features(self, x):
        t = self.tables
        domains, items = _decode_rgb(x)
        logits, feats = [], []
        for dom, i in zip(domains, items):
            if dom == "target":
                logits.append(t.rgb[t.phase][i] if not self.training else np.zeros(C, np.float32))
                feats.append(t.target_features[i])
            else:
                logits.append(np.zeros(C, np.float32))
                feats.append(t.source_features[i])
        if self.training and "source" in domains:
            t.last_source = [i for dom, i in zip(domains, items) if dom == "source"]
        logits = torch.from_numpy(np.stack(logits))[:, :, None].expand(-1, -1, 2) + 0 * self.zero
        feats = torch.from_numpy(np.stack(feats))[:, :, None].expand(-1, -1, 2) + 0 * self.zero
        return logits, feats


class StubFlow(nn.Module):
    in_channels = 2

    def __init__(self, tables: Tables):
        super().__init__()
        self.tables = tables
        self.zero = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        t = self.tables
        if self.training:
            t.flow_inputs.append((t.phase, list(t.last_source), x.detach().float().clone()))
            logits = torch.zeros(len(x), C)
        else:  # evaluation clips: the target video from the flow's y code
            q = torch.round((x[:, 1].mean(dim=(1, 2, 3)) * 20 + 20) * 255 / 40).long().numpy()
            items = [int(np.flatnonzero(Q_Y_TARGET == v)[0]) for v in q]
            logits = torch.from_numpy(t.flow[t.phase][items])
        return logits[:, :, None].expand(-1, -1, 2) + 0 * self.zero

    def forward_with_features(self, x):  # the stream interface the trainer's step uses (as InceptionI3d)
        logits = self.forward(x)
        return logits, torch.zeros(len(x), 1, logits.shape[-1])


@pytest.fixture
def stub_streams(monkeypatch):
    """Installs stub streams; returns seed -> Tables (one table set per seed, made on first use)."""
    tables: dict[int, Tables] = {}

    def build(cfg, num_classes, pretrained=None):
        assert num_classes == C
        t = tables.setdefault(cfg.seed, Tables(cfg.seed))
        parts = cfg.parts
        flow = StubFlow(t) if parts["use_flow"] else None
        head = VideoPaceHead(D, cfg.num_paces) if parts["use_pace"] else None
        return StubRGB(t), flow, head

    monkeypatch.setattr(trainer, "build_streams", build)
    return tables


def _run(tables, out, stores, **kw):
    seed = kw.get("seed", 0)

    def on_epoch_end(epoch, row):
        tables[seed].phase = epoch + 1

    return trainer.train(out, *stores, on_epoch_end=on_epoch_end, **{**CONFIG, **kw})


# -- expected flow clips ----------------------------------------------------------------------------------------

def _own_flow_clip(i):
    """Source video i's training flow clip before the flip: flows of frames 0..K-1 (the last frame takes the
    last flow), y = its code everywhere."""
    x = _flow_value(Q_X_SOURCE[[0, 1, 2, 2]])
    clip = torch.empty(2, K, S, S)
    clip[0] = x[:, None, None]
    clip[1] = _flow_value(Q_Y_SOURCE[i])[0]
    return clip


def _bank_clip(k):
    """Target video k's bank clip: the 8 evaluation flows subsampled to 4 (frames 0, 2, 4, 6), centre crop,
    stored in float16."""
    clip = torch.empty(2, K, S, S)
    clip[0] = _flow_value(Q_X_TARGET[[0, 2, 4, 6]])[:, None, None]
    clip[1] = _flow_value(Q_Y_TARGET[k])[0]
    return clip.half().float()


def _expected_members(labels, conf):
    """Per class the BANK most confident targets (ties: lower index)."""
    return [sorted(np.flatnonzero(labels == c), key=lambda k: (-conf[k], k))[:BANK] for c in range(C)]


def _cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _expected_weights(mode, members, source_feature, target_features):
    """Member -> weight of the aggregate, by the Table 3 definitions (None for the random modes)."""
    sims = np.array([_cos(target_features[m], source_feature) for m in members])
    order = sorted(range(len(members)), key=lambda j: (-sims[j], j))

    def simw(js):
        w = np.clip(sims[js], 0, None)
        return w / w.sum() if w.sum() > 0 else np.full(len(js), 1 / len(js))

    top5 = order[:5]
    if mode == "mean":
        return dict(zip(members, np.full(len(members), 1 / len(members))))
    if mode == "simw_sum":
        return dict(zip(members, simw(list(range(len(members))))))
    if mode == "simw_mean_top5":
        return {members[j]: 1 / len(top5) for j in top5}
    if mode == "simw_sum_top5":
        return dict(zip([members[j] for j in top5], simw(top5)))
    if mode == "simw_top1":
        return {members[order[0]]: 1.0}
    return None


def _allowed_random(mode, members, source_feature, target_features):
    if mode == "random":
        return list(members)
    sims = np.array([_cos(target_features[m], source_feature) for m in members])
    return [members[j] for j in sorted(range(len(members)), key=lambda j: (-sims[j], j))[:5]]


def _matches_own_flow(got, i):
    own = _own_flow_clip(i)
    flipped = torch.cat([-own[:1], own[1:]])
    return torch.allclose(got, own, atol=1e-6) or torch.allclose(got, flipped, atol=1e-6)


# -- tests ------------------------------------------------------------------------------------------------------

def test_tables_can_tell_fused_from_single_stream_predictions():
    """Preconditions of the tests below: with these tables, fusion changes predictions, pseudo-labels change
    between phases, and a class holds more than 5 bank members."""
    t = Tables(0)
    for phase in (0, 1):
        _, fused, _ = t.fused(phase)
        assert (fused != t.rgb[phase].argmax(1)).any() and (fused != t.flow[phase].argmax(1)).any()
        assert max((fused == c).sum() for c in range(C)) > 5
    assert (t.fused(0)[1] != t.fused(1)[1]).any()


def test_source_only_flow_stream_always_sees_the_sources_own_flow(stores, stub_streams, tmp_path):
    _run(stub_streams, tmp_path / "so", stores, variant="SO_RGB_FLOW", epochs=2, warmup_epochs=1)
    inputs = stub_streams[0].flow_inputs
    assert len(inputs) == 2 * (NS // 3)
    seen = set()
    for _, items, batch in inputs:
        assert len(items) == len(batch)
        for i, got in zip(items, batch):
            assert _matches_own_flow(got, i), i
            seen.add(i)
    assert seen == set(range(NS))


@pytest.mark.parametrize("variant,aggregation", [("SO_RGB_FLOW_CFB", a) for a in AGGREGATIONS]
                         + [("FULL", "mean")])
def test_after_warm_up_the_flow_stream_gets_the_bank_of_the_sample_class(stores, stub_streams, tmp_path,
                                                                         variant, aggregation):
    out = tmp_path / "run"
    result = _run(stub_streams, out, stores, variant=variant, aggregation=aggregation, epochs=3, warmup_epochs=1)
    t = stub_streams[0]
    by_epoch = {e: [(i, x) for _, items, batch in t.flow_inputs if _ == e for i, x in zip(items, batch)]
                for e in range(3)}
    assert all(len(v) == NS for v in by_epoch.values())
    # warm-up: the source's own flow
    for i, got in by_epoch[0]:
        assert _matches_own_flow(got, i)
    trimmed = False
    for epoch in (1, 2):
        # the bank of epoch e is refreshed from the predictions after epoch e - 1 (fused streams)
        _, pred, conf = t.fused(epoch - 1)
        members = _expected_members(pred, conf)
        snap = read_bank_snapshot(out / "bank" / f"epoch_{epoch:03d}.h5")
        assert snap["pseudo_labels"].tolist() == pred.tolist()
        np.testing.assert_allclose(snap["confidences"], conf, rtol=0, atol=1e-6)
        assert np.flatnonzero(snap["in_bank"]).tolist() == sorted(np.concatenate(members).tolist())
        assert snap["labels"].tolist() == TARGET_LABELS.tolist()
        for i, got in by_epoch[epoch]:
            cls_members = members[SOURCE_LABELS[i]]
            assert len(cls_members) > 0
            weights = _expected_weights(aggregation, cls_members, t.source_features[i], t.target_features)
            if weights is None:  # one member drawn: exactly one of the allowed clips
                allowed = _allowed_random(aggregation, cls_members, t.source_features[i], t.target_features)
                assert any(torch.equal(got, _bank_clip(k)) for k in allowed), (epoch, i)
                assert not _matches_own_flow(got, i)
            else:
                expected = sum(w * _bank_clip(k) for k, w in weights.items())
                torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-6)
                trimmed |= len(weights) < len(cls_members)
    if aggregation in ("simw_mean_top5", "simw_sum_top5"):
        assert trimmed, "no class bank had more than 5 members: the top-5 cut was not exercised"
    # the run's result is the fused prediction of the last epoch
    _, pred, _ = t.fused(3 - 1)
    assert result["accuracy"] == pytest.approx(float((pred == TARGET_LABELS).mean()))


def test_the_same_bank_clips_come_back_for_random_draws(stores, stub_streams, tmp_path):
    """``random`` draws members: over the run, more than one member of a class is used."""
    _run(stub_streams, tmp_path / "r", stores, variant="SO_RGB_FLOW_CFB", aggregation="random", epochs=4,
         warmup_epochs=1)
    t = stub_streams[0]
    drawn = set()
    for phase, items, batch in t.flow_inputs:
        if phase >= 1:
            for got in batch:
                q = int(torch.round((got[1, 0, 0, 0] * 20 + 20) * 255 / 40))
                drawn.add(int(np.flatnonzero(Q_Y_TARGET == q)[0]))
    assert len(drawn) >= 3


def _read_predictions(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_evaluation_files_and_report_fuse_the_streams_and_agree(stores, stub_streams, tmp_path):
    variants = {"SO_RGB": False, "SO_RGB_FLOW_CFB": True}
    eval_dirs, accuracies = [], {v: [] for v in variants}
    for variant, with_flow in variants.items():
        for seed in (0, 1):
            run = tmp_path / f"{variant}_{seed}"
            result = _run(stub_streams, run, stores, variant=variant, seed=seed, epochs=2, warmup_epochs=1)
            t = stub_streams[seed]
            t.phase = 3  # the stubs' outputs at evaluation time
            scores, pred, conf = t.fused(3, with_flow)
            m = evaluate_run(run, stores[1], out_dir=run / "eval")
            rows = _read_predictions(run / "eval" / "predictions.csv")
            assert [r["id"] for r in rows] == [f"t{k:02d}" for k in range(NT)]
            assert [int(r["label"]) for r in rows] == TARGET_LABELS.tolist()
            assert [int(r["prediction"]) for r in rows] == pred.tolist()
            np.testing.assert_allclose([float(r["confidence"]) for r in rows], conf, atol=2e-6)
            acc = float((pred == TARGET_LABELS).mean())
            metrics = json.loads((run / "eval" / "metrics.json").read_text())
            assert metrics == m
            assert metrics["accuracy"] == pytest.approx(acc)
            assert metrics["streams"] == ("rgb+flow" if with_flow else "rgb")
            confusion = np.zeros((C, C), int)
            np.add.at(confusion, (TARGET_LABELS, pred), 1)
            assert metrics["confusion"] == confusion.tolist()
            assert metrics["per_class_accuracy"] == pytest.approx((np.diag(confusion) / N_TARGET).tolist())
            # the trainer's result (phase 1: the evaluation after its last epoch) is the fused prediction too
            assert result["accuracy"] == pytest.approx(float((t.fused(1, with_flow)[1] == TARGET_LABELS).mean()))
            accuracies[variant].append(100 * acc)
            eval_dirs.append(run / "eval")
    rep = write_report(eval_dirs, tmp_path / "report", benchmark="CODED")
    md = (tmp_path / "report" / "report.md").read_text()
    for variant, accs in accuracies.items():
        mean, std = float(np.mean(accs)), float(np.std(accs))
        assert rep["summary"][variant]["accuracies"] == pytest.approx(accs)
        assert rep["summary"][variant]["mean"] == pytest.approx(mean)
        assert rep["summary"][variant]["std"] == pytest.approx(std)
        assert f"| {variant} |" in md and f"| {mean:.1f} +- {std:.1f} | 2 |" in md
    assert accuracies["SO_RGB"] != accuracies["SO_RGB_FLOW_CFB"] or accuracies["SO_RGB"][0] != accuracies["SO_RGB"][1]
    with open(tmp_path / "report" / "results.csv", newline="") as f:
        results = {(r["variant"], int(r["seed"])): float(r["accuracy"]) for r in csv.DictReader(f)}
    for variant, accs in accuracies.items():
        assert [results[(variant, s)] for s in (0, 1)] == pytest.approx(accs, abs=0.005)
