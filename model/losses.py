"""The losses of the paper (Sec. 3), one function per equation, and the DA add-ons of Table 4.

Shapes: per-frame logits are B x C x T' (what ``InceptionI3d.forward`` returns), labels are int64 B.

Paper vs released code: the paper writes softmax cross-entropy everywhere; the released code
(``train_with_rgbflow_rpflow_random_videopace.py``) uses ``binary_cross_entropy_with_logits`` against one-hot
targets for L_loc and L_c. ``loss_kind="ce"`` (default) is the paper, ``loss_kind="bce"`` the code.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_KINDS = ("ce", "bce")


def _check_kind(loss_kind: str) -> None:
    if loss_kind not in LOSS_KINDS:
        raise ValueError(f"loss_kind must be one of {LOSS_KINDS}, got {loss_kind!r}")


def _video_ce(logits: torch.Tensor, labels: torch.Tensor, loss_kind: str) -> torch.Tensor:
    """Cross-entropy of B x C video logits (softmax CE, or the code's mean-over-classes BCE on one-hot)."""
    if loss_kind == "ce":
        return F.cross_entropy(logits, labels)
    one_hot = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, one_hot)


def upsample_frame_logits(per_frame_logits: torch.Tensor, num_frames: int) -> torch.Tensor:
    """B x C x T' -> B x C x K by linear interpolation in time (``F.upsample(..., K, mode='linear')`` in the
    released code; that call defaults to ``align_corners=False``)."""
    if per_frame_logits.shape[-1] == num_frames:
        return per_frame_logits
    return F.interpolate(per_frame_logits.float(), size=num_frames, mode="linear", align_corners=False)


def local_loss(per_frame_logits: torch.Tensor, labels: torch.Tensor, num_frames: int,
               loss_kind: str = "ce") -> torch.Tensor:
    """L_loc, Eq. 2: frame-level classification of the K source RGB frames.

    The I3D gives T' < K logit vectors; they are upsampled linearly to the K source frames and each frame is
    classified against the clip label; the loss is the mean over the B x K frames.
    """
    _check_kind(loss_kind)
    logits = upsample_frame_logits(per_frame_logits, num_frames)  # B x C x K
    b, c, k = logits.shape
    if loss_kind == "ce":
        return F.cross_entropy(logits, labels[:, None].expand(b, k))
    one_hot = F.one_hot(labels, c).to(logits.dtype)[:, :, None].expand(b, c, k)
    return F.binary_cross_entropy_with_logits(logits, one_hot)


def classification_loss(rgb_logits: torch.Tensor, flow_logits: torch.Tensor | None, labels: torch.Tensor,
                        loss_kind: str = "ce") -> torch.Tensor:
    """L_c, Eq. 3 (and L'_c of Eq. 6 when ``flow_logits`` come from memory-bank flows): video-level
    cross-entropy of both streams, CE(mean_t rgb logits) + CE(mean_t flow logits).

    ``flow_logits=None`` gives the RGB-only term (the SO_RGB variant).
    """
    _check_kind(loss_kind)
    loss = _video_ce(rgb_logits.float().mean(dim=-1), labels, loss_kind)
    if flow_logits is not None:
        loss = loss + _video_ce(flow_logits.float().mean(dim=-1), labels, loss_kind)
    return loss


def pace_loss(pace_logits: torch.Tensor, pace_labels: torch.Tensor) -> torch.Tensor:
    """L_vc, Eq. 5: cross-entropy of the video pace head on target RGB clips.

    ``pace_logits`` are B x C_vp (already averaged over time by ``VideoPaceHead``); ``pace_labels`` are
    r - 1 for a clip sampled at pace r in 1..C_vp.
    """
    return F.cross_entropy(pace_logits.float(), pace_labels)


def total_loss(classification: torch.Tensor, local: torch.Tensor, pace: torch.Tensor | float = 0.0,
               lambda1: float = 1.0, lambda2: float = 0.0) -> torch.Tensor:
    """Eq. 6: L = L'_c + lambda1 L_loc + lambda2 L_vc."""
    return classification + lambda1 * local + lambda2 * pace


# --------------------------------------------------------------------------------------------------------
# DA add-ons of Table 4 (weight lambda3), as ST-I2V's train.py defines them.

def gaussian_kernel_matrix(x: torch.Tensor, kernel_mul: float = 2.0, kernel_num: int = 5) -> torch.Tensor:
    """Sum of ``kernel_num`` Gaussian kernels on the rows of x (DAN's multi-kernel).

    Bandwidths: base = mean pairwise squared distance (off-diagonal) / kernel_mul ** (kernel_num // 2), then
    base * kernel_mul ** i for i in 0..kernel_num-1. The base bandwidth is a statistic of the batch and is
    treated as a constant (detached), so the gradient only moves the samples, not the kernel scale.
    """
    n = x.shape[0]
    sq_dist = torch.cdist(x, x).pow(2)
    base = sq_dist.detach().sum() / max(n * n - n, 1)
    base = base.clamp_min(1e-12) / kernel_mul ** (kernel_num // 2)
    return sum(torch.exp(-sq_dist / (base * kernel_mul ** i)) for i in range(kernel_num))


def dan_mmd_loss(source: torch.Tensor, target: torch.Tensor, kernel_mul: float = 2.0,
                 kernel_num: int = 5) -> torch.Tensor:
    """DAN: multi-kernel MMD^2 between source and target rows (B_s x D and B_t x D; the trainer passes the
    temporal-mean logits). Biased estimate mean(K_ss) + mean(K_tt) - 2 mean(K_st); exactly 0 for identical
    sets. ST-I2V divides its partial sums inside the loop over samples; this is the plain estimator.
    """
    ns = source.shape[0]
    kernels = gaussian_kernel_matrix(torch.cat([source.float(), target.float()]), kernel_mul, kernel_num)
    k_ss, k_tt, k_st = kernels[:ns, :ns], kernels[ns:, ns:], kernels[:ns, ns:]
    return k_ss.mean() + k_tt.mean() - 2 * k_st.mean()


def mcc_loss(target_logits: torch.Tensor, temperature: float = 2.5) -> torch.Tensor:
    """Minimum Class Confusion (Jin et al., ECCV 2020) on B x C target logits.

    Temperature-scaled softmax; samples weighted by 1 + exp(-entropy) (normalised to sum to B, detached);
    class-confusion matrix P^T W P with each column divided by its sum; loss = off-diagonal sum / C, in [0, 1).
    """
    probs = F.softmax(target_logits.float() / temperature, dim=1)
    b, c = probs.shape
    entropy = -(probs * torch.log(probs + 1e-5)).sum(dim=1).detach()
    weight = 1 + torch.exp(-entropy)
    weight = b * weight / weight.sum()
    confusion = (probs * weight[:, None]).t() @ probs  # C x C, symmetric
    confusion = confusion / confusion.sum(dim=0, keepdim=True)
    return (confusion.sum() - confusion.trace()) / c


def bnm_loss(target_logits: torch.Tensor) -> torch.Tensor:
    """Fast Batch Nuclear-norm Maximisation (FBNM; what ST-I2V calls for "BNM") on B x C target logits:
    minus the mean of the largest min(B, C) column L2 norms of the softmax matrix (an approximation of its
    nuclear norm). Always <= 0; more negative for confident and diverse predictions.
    """
    probs = F.softmax(target_logits.float(), dim=1)
    norms = probs.pow(2).sum(dim=0).sqrt()
    top = torch.sort(norms, descending=True).values[: min(probs.shape)]
    return -top.mean()
