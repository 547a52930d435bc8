"""The Category-aware Flow Memory Bank: membership, retrieval modes (Table 3), empty classes, snapshots."""
import numpy as np
import pytest
import torch

from model.memory_bank import AGGREGATIONS, FlowMemoryBank, read_bank_snapshot, write_bank_snapshot

SHAPE = (2, 4, 3, 3)  # 2 x T x H x W


def _bank(aggregation="random", capacity=2):
    # 7 targets: class 0 has 4 (conf .9 .5 .7 .1), class 1 has 3 (conf .8 .6 .95), class 2 none
    labels = np.array([0, 0, 1, 0, 1, 0, 1])
    conf = np.array([0.9, 0.5, 0.8, 0.7, 0.6, 0.1, 0.95], np.float32)
    feats = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    bank = FlowMemoryBank(num_classes=3, capacity=capacity, aggregation=aggregation)
    bank.refresh(labels, conf, feats)
    members = bank.member_indices()
    bank.set_flows(members, [torch.full(SHAPE, float(i)) for i in members])  # clip i is filled with i
    return bank, feats


def test_bank_keeps_the_n_most_confident_per_class():
    bank, _ = _bank(capacity=2)
    assert bank.members[0].tolist() == [0, 3]
    assert bank.members[1].tolist() == [6, 2]
    assert bank.members[2].tolist() == []
    assert bank.size == 4
    assert bank.class_sizes().tolist() == [2, 2, 0]
    assert bank.in_bank().tolist() == [True, False, True, True, False, False, True]


def test_snapshot_round_trips_through_hdf5(tmp_path):
    bank, _ = _bank()
    snap = bank.snapshot([f"v{i}" for i in range(7)], target_labels=[0, 0, 1, 1, 1, 0, 1])
    write_bank_snapshot(tmp_path / "s.h5", snap, {"epoch": 3})
    back = read_bank_snapshot(tmp_path / "s.h5")
    assert list(back["target_ids"]) == [f"v{i}" for i in range(7)]
    assert back["pseudo_labels"].tolist() == [0, 0, 1, 0, 1, 0, 1]
    assert np.allclose(back["confidences"], snap["confidences"])
    assert back["in_bank"].tolist() == snap["in_bank"].tolist()
    assert back["attrs"]["epoch"] == 3 and back["attrs"]["complete"] == 1
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_every_aggregation_returns_a_flow_of_the_right_shape_with_weights_summing_to_one(aggregation):
    bank, feats = _bank(aggregation, capacity=3)
    rng = np.random.default_rng(0)
    idx, w = bank.weights(0, feats[1], rng)
    assert len(idx) == len(w) and w.sum() == pytest.approx(1.0)
    assert set(idx.tolist()) <= set(bank.members[0].tolist())
    expected_count = {"random": 1, "mean": 3, "simw_sum": 3, "simw_mean_top5": 3, "simw_sum_top5": 3,
                      "simw_top1": 1, "simw_random_top5": 1}[aggregation]
    assert len(idx) == expected_count
    source = torch.zeros((2,) + SHAPE)
    out = bank.retrieve(torch.tensor([0, 1]), source, feats[[1, 4]], rng)
    assert out.shape == source.shape
    # each output clip is the weighted sum of member clips (clip i == i): a value within the members' range
    assert out[0].min() >= 0 and out[0].max() <= 5


def test_mean_mode_averages_all_members_and_top1_picks_the_most_similar():
    bank, feats = _bank("mean", capacity=3)
    out = bank.retrieve(torch.tensor([0]), torch.zeros((1,) + SHAPE), None, np.random.default_rng(0))
    assert torch.allclose(out, torch.full((1,) + SHAPE, (0 + 3 + 1) / 3))
    top1 = FlowMemoryBank(3, capacity=3, aggregation="simw_top1")
    top1.refresh(bank.pseudo_labels, bank.confidences, feats)
    idx, w = top1.weights(1, feats[4] * 2.0, np.random.default_rng(0))  # target 4's own feature: cosine 1
    assert idx.tolist() == [4] and w.tolist() == [1.0]


def test_simw_sum_weights_follow_cosine_similarity():
    feats = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    bank = FlowMemoryBank(1, capacity=3, aggregation="simw_sum")
    bank.refresh([0, 0, 0], [0.9, 0.8, 0.7], feats)
    idx, w = bank.weights(0, torch.tensor([1.0, 0.0]), np.random.default_rng(0))
    assert idx.tolist() == [0, 1, 2]
    assert np.allclose(w, [1 / 1.6, 0.6 / 1.6, 0.0])


def test_random_mode_draws_members_uniformly():
    bank, _ = _bank("random", capacity=3)
    rng = np.random.default_rng(1)
    drawn = [int(bank.weights(0, None, rng)[0][0]) for _ in range(300)]
    assert set(drawn) == {0, 1, 3}
    assert min(drawn.count(i) for i in (0, 1, 3)) > 60


def test_class_with_empty_bank_keeps_its_own_flow():
    bank, feats = _bank("mean")
    source = torch.full((2,) + SHAPE, -7.0)
    out = bank.retrieve(torch.tensor([2, 0]), source, feats[:2], np.random.default_rng(0))
    assert torch.equal(out[0], source[0])
    assert not torch.equal(out[1], source[1])


def test_simw_modes_need_features():
    bank = FlowMemoryBank(2, aggregation="simw_top1")
    with pytest.raises(ValueError, match="features"):
        bank.refresh([0, 1], [0.5, 0.5], None)
    with pytest.raises(ValueError, match="aggregation"):
        FlowMemoryBank(2, aggregation="median")


def _fan_bank(aggregation, angles_deg, top_k=5):
    """One class whose members 0..n-1 have unit features at the given angles; member clip i is filled with i.
    A source feature along the x axis has cosine similarity cos(angle) with member i."""
    a = np.deg2rad(np.asarray(angles_deg, np.float64))
    feats = torch.tensor(np.stack([np.cos(a), np.sin(a)], 1), dtype=torch.float32)
    n = len(a)
    bank = FlowMemoryBank(1, capacity=n, aggregation=aggregation, top_k=top_k)
    bank.refresh(np.zeros(n, np.int64), np.linspace(1.0, 0.5, n), feats)  # confidence order = index order
    bank.set_flows(range(n), [torch.full(SHAPE, float(i)) for i in range(n)])
    return bank


# 7 members (more than top-5): similarities cos 50, cos 0, cos 70, cos 10, cos 30, cos 20, cos 40 -> the five
# most similar are members 1, 3, 5, 4, 6 (0, 10, 20, 30, 40 degrees); 0 and 2 must be cut.
ANGLES = [50, 0, 70, 10, 30, 20, 40]
TOP5 = [1, 3, 5, 4, 6]
SOURCE = torch.tensor([2.0, 0.0])


def test_top5_modes_keep_only_the_five_most_similar_members():
    rng = np.random.default_rng(0)
    cos = np.cos(np.deg2rad([0, 10, 20, 30, 40]))
    idx, w = _fan_bank("simw_mean_top5", ANGLES).weights(0, SOURCE, rng)
    assert idx.tolist() == TOP5 and np.allclose(w, 0.2)
    idx, w = _fan_bank("simw_sum_top5", ANGLES).weights(0, SOURCE, rng)
    assert idx.tolist() == TOP5 and np.allclose(w, cos / cos.sum())
    idx, w = _fan_bank("simw_top1", ANGLES).weights(0, SOURCE, rng)
    assert idx.tolist() == [1] and w.tolist() == [1.0]
    bank = _fan_bank("simw_random_top5", ANGLES)
    drawn = [int(bank.weights(0, SOURCE, rng)[0][0]) for _ in range(200)]
    assert set(drawn) == set(TOP5)
    # retrieved clips by value: clip i holds i everywhere
    src = torch.zeros((1,) + SHAPE)
    mean_top5 = _fan_bank("simw_mean_top5", ANGLES).retrieve([0], src, SOURCE[None], rng)
    assert torch.allclose(mean_top5, torch.full_like(src, sum(TOP5) / 5))
    sum_top5 = _fan_bank("simw_sum_top5", ANGLES).retrieve([0], src, SOURCE[None], rng)
    assert torch.allclose(sum_top5, torch.full_like(src, float((cos / cos.sum()) @ np.array(TOP5))), atol=1e-6)
    # top_k is a parameter: 3 keeps members 1, 3, 5
    idx, w = _fan_bank("simw_mean_top5", ANGLES, top_k=3).weights(0, SOURCE, rng)
    assert idx.tolist() == [1, 3, 5] and np.allclose(w, 1 / 3)


def test_similarity_weights_clip_negative_similarities_and_fall_back_to_uniform():
    rng = np.random.default_rng(0)
    # cos 0 = 1, cos 60 = 0.5, cos 120 = -0.5 (clipped to 0), cos 180 = -1 (clipped to 0)
    idx, w = _fan_bank("simw_sum", [0, 60, 120, 180]).weights(0, SOURCE, rng)
    assert idx.tolist() == [0, 1, 2, 3] and np.allclose(w, [2 / 3, 1 / 3, 0, 0])
    # every similarity <= 0: the plain mean, so the aggregate stays on the flow scale
    idx, w = _fan_bank("simw_sum", [100, 120, 180]).weights(0, SOURCE, rng)
    assert np.allclose(w, 1 / 3)
    out = _fan_bank("simw_sum", [100, 120, 180]).retrieve([0], torch.zeros((1,) + SHAPE), SOURCE[None], rng)
    assert torch.allclose(out, torch.full((1,) + SHAPE, 1.0))


@pytest.mark.parametrize("aggregation,expected", [("mean", (0 + 3 + 1) / 3), ("simw_top1", None)])
def test_each_sample_gets_the_bank_of_its_own_class(aggregation, expected):
    bank, feats = _bank(aggregation, capacity=3)
    out = bank.retrieve(torch.tensor([1, 0, 1]), torch.zeros((3,) + SHAPE), feats[[6, 0, 2]],
                        np.random.default_rng(0))
    if expected is not None:  # class 1 members 6, 2, 4; class 0 members 0, 3, 1
        assert torch.allclose(out[0], torch.full(SHAPE, (6 + 2 + 4) / 3))
        assert torch.allclose(out[1], torch.full(SHAPE, expected))
    else:  # a member's own feature is the most similar to itself
        assert [float(out[b, 0, 0, 0, 0]) for b in range(3)] == [6.0, 0.0, 2.0]


def test_bank_refresh_replaces_the_previous_members_and_flows():
    bank, feats = _bank("mean", capacity=2)
    bank.refresh(np.array([1, 1, 0, 0, 0, 1, 0]), np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], np.float32), feats)
    assert bank.members[0].tolist() == [6, 4] and bank.members[1].tolist() == [5, 1]
    assert bank.flows == {}
    # ties in confidence: the lower target index first
    bank.refresh(np.zeros(4, np.int64), np.full(4, 0.5, np.float32), feats[:4])
    assert bank.members[0].tolist() == [0, 1]
