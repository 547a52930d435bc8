"""Losses of Eq. 2, 3, 5, 6 and the DA add-ons of Table 4, on hand-computed cases."""
import math

import pytest
import torch
import torch.nn.functional as F

from model.heads import VideoPaceHead
from model.losses import (bnm_loss, classification_loss, dan_mmd_loss, local_loss, mcc_loss, pace_loss,
                          total_loss, upsample_frame_logits)


@pytest.fixture(autouse=True)
def _seeded():
    """Module initialisation (the pace head's weights) draws from the global generator: seed it."""
    torch.manual_seed(0)


def _gen(seed: int) -> torch.Generator:
    """Every random tensor in these tests comes from its own seeded generator (independent of test order)."""
    return torch.Generator().manual_seed(seed)


def test_local_loss_is_mean_per_frame_cross_entropy_over_upsampled_frames():
    # 2 time steps -> 4 frames, linear (align_corners=False): values at t = 0, 0.25, 0.75, 1 of the way
    logits = torch.tensor([[[0.0, 2.0], [1.0, 1.0]]])  # B=1, C=2, T'=2
    up = upsample_frame_logits(logits, 4)
    assert torch.allclose(up[0, 0], torch.tensor([0.0, 0.5, 1.5, 2.0]))
    assert torch.allclose(up[0, 1], torch.ones(4))
    label = torch.tensor([1])
    expected = sum(-math.log(math.exp(1) / (math.exp(1) + math.exp(a))) for a in (0.0, 0.5, 1.5, 2.0)) / 4
    assert local_loss(logits, label, 4).item() == pytest.approx(expected, rel=1e-6)


def test_local_loss_bce_variant_matches_one_hot_bce():
    logits = torch.randn(3, 4, 8, generator=_gen(1))
    labels = torch.tensor([0, 3, 1])
    target = F.one_hot(labels, 4).float()[:, :, None].expand(3, 4, 16)
    expected = F.binary_cross_entropy_with_logits(upsample_frame_logits(logits, 16), target)
    assert local_loss(logits, labels, 16, loss_kind="bce").item() == pytest.approx(expected.item(), rel=1e-6)


def test_classification_loss_sums_both_streams_video_level_ce():
    rgb = torch.tensor([[[1.0, 3.0], [0.0, 0.0]]])   # mean over time: [2, 0]
    flow = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])  # mean over time: [0, 1]
    label = torch.tensor([0])
    ce_rgb = -math.log(math.exp(2) / (math.exp(2) + 1))
    ce_flow = -math.log(1 / (1 + math.e))
    assert classification_loss(rgb, None, label).item() == pytest.approx(ce_rgb, rel=1e-6)
    assert classification_loss(rgb, flow, label).item() == pytest.approx(ce_rgb + ce_flow, rel=1e-6)


def test_classification_loss_rejects_unknown_kind():
    with pytest.raises(ValueError, match="loss_kind"):
        classification_loss(torch.zeros(1, 2, 1), None, torch.tensor([0]), loss_kind="focal")


def test_pace_loss_is_cross_entropy_of_pace_labels():
    logits = torch.tensor([[0.0, math.log(3.0)]])
    assert pace_loss(logits, torch.tensor([1])).item() == pytest.approx(-math.log(0.75), rel=1e-6)


def test_pace_head_averages_logits_over_time():
    head = VideoPaceHead(6, num_paces=5)
    x = torch.randn(2, 6, 8, generator=_gen(2))
    per_step = head.classifier(x)
    assert head(x).shape == (2, 5)
    assert torch.allclose(head(x), per_step.mean(-1))


def test_total_loss_is_eq6():
    assert total_loss(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0), 0.5, 0.1).item() == pytest.approx(2.3)


def test_mmd_zero_for_identical_sets_and_positive_for_shifted():
    x = torch.randn(8, 5, generator=_gen(3))
    assert dan_mmd_loss(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert dan_mmd_loss(x, x + 3.0).item() > 0.1
    # a larger shift is further away
    assert dan_mmd_loss(x, x + 3.0).item() > dan_mmd_loss(x, x + 0.3).item() > 0


def test_mmd_has_gradient_towards_the_other_domain():
    s = torch.randn(6, 4, generator=_gen(4))
    t = (torch.randn(6, 4, generator=_gen(5)) + 2).requires_grad_()
    dan_mmd_loss(s, t).backward()
    assert t.grad.abs().sum() > 0


def test_mcc_is_zero_for_confident_distinct_classes_and_larger_when_confused():
    confident = torch.eye(4) * 100
    confused = torch.zeros(4, 4)
    assert mcc_loss(confident).item() == pytest.approx(0.0, abs=1e-4)
    value = mcc_loss(confused).item()
    assert value == pytest.approx(3 / 4, rel=1e-5)  # uniform predictions: every column (1/C ... 1/C)
    assert 0 <= mcc_loss(torch.randn(16, 4, generator=_gen(6))).item() < 1


def test_bnm_is_negative_and_prefers_confident_diverse_predictions():
    confident_diverse = torch.eye(4) * 50
    one_class = torch.zeros(4, 4)
    one_class[:, 0] = 50
    uniform = torch.zeros(4, 4)
    # top-min(B, C) column norms: diverse one-hot -> all 1; uniform -> all sqrt(4 * 1/16) = 0.5
    assert bnm_loss(confident_diverse).item() == pytest.approx(-1.0, abs=1e-4)
    assert bnm_loss(uniform).item() == pytest.approx(-0.5, abs=1e-6)
    assert bnm_loss(one_class).item() == pytest.approx(-2.0 / 4, abs=1e-4)  # one column of norm 2
    assert bnm_loss(torch.randn(8, 4, generator=_gen(7))).item() < 0


def _mcc_by_hand(probs_rows, temperature=2.5):
    """MCC from its definition (Jin et al. 2020) on rows of probabilities already at temperature T, with
    python floats: w_i = 1 + exp(-H_i) normalised to sum to B, C_jk = sum_i w_i p_ij p_ik, columns
    normalised, loss = off-diagonal sum / C."""
    b, c = len(probs_rows), len(probs_rows[0])
    ent = [-sum(p * math.log(p + 1e-5) for p in row) for row in probs_rows]
    w = [1 + math.exp(-h) for h in ent]
    w = [b * x / sum(w) for x in w]
    conf = [[sum(w[i] * probs_rows[i][j] * probs_rows[i][k] for i in range(b)) for k in range(c)] for j in range(c)]
    col = [sum(conf[j][k] for j in range(c)) for k in range(c)]
    conf = [[conf[j][k] / col[k] for k in range(c)] for j in range(c)]
    return sum(conf[j][k] for j in range(c) for k in range(c) if j != k) / c


def test_mcc_weights_samples_by_their_entropy():
    # logits = T log p, so the tempered softmax gives exactly these rows: one uncertain, two confident
    rows = [[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]
    logits = 2.5 * torch.log(torch.tensor(rows, dtype=torch.float64))
    expected = _mcc_by_hand(rows)
    got = mcc_loss(logits).item()
    assert got == pytest.approx(expected, rel=1e-5)
    # the weights matter here: equal weights give a value off by far more than the tolerance
    b = len(rows)
    unweighted = [[sum(rows[i][j] * rows[i][k] for i in range(b)) for k in range(2)] for j in range(2)]
    col = [unweighted[0][k] + unweighted[1][k] for k in range(2)]
    unweighted_loss = (unweighted[0][1] / col[1] + unweighted[1][0] / col[0]) / 2
    assert abs(unweighted_loss - expected) > 1e-3
    # confident rows weigh more: the uncertain row's contribution to the off-diagonal shrinks
    ent = [-sum(p * math.log(p + 1e-5) for p in r) for r in rows]
    assert ent[0] > ent[2] > ent[1]


def test_mcc_weights_carry_no_gradient():
    logits = torch.tensor([[1.0, -0.5, 0.2], [0.3, 2.0, -1.0]], requires_grad=True)
    mcc_loss(logits).backward()
    # reference: the same loss with the weights computed from a detached copy
    ref_logits = logits.detach().clone().requires_grad_()
    probs = F.softmax(ref_logits / 2.5, dim=1)
    p0 = probs.detach()
    w = 1 + torch.exp((p0 * torch.log(p0 + 1e-5)).sum(1))
    w = 2 * w / w.sum()
    conf = (probs * w[:, None]).t() @ probs
    conf = conf / conf.sum(0, keepdim=True)
    ((conf.sum() - conf.trace()) / 3).backward()
    assert torch.allclose(logits.grad, ref_logits.grad, atol=1e-6)
