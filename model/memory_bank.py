"""The Category-aware Flow Memory Bank (CFB, Sec. 3.2) and the flow aggregation variants of Table 3.

After each pseudo-labelling pass over all target videos (argmax of the summed softmax of both streams), the
bank keeps, per pseudo class, the N most confident target videos (paper N = 60; released code
``-cdb_size`` 50) together with a flow clip of each (the centre-cropped evaluation flows subsampled to the
training clip length, as the released ``CategoryDB``) and its RGB feature. During training the flow of a
source sample of class c is replaced by a clip built from the bank of class c:

=====================  ===============================================================================
``random``             one member drawn uniformly (Random 1/N; the paper's default)
``mean``               the average of all N members (Mean N; the released code's default ``-cdb_frame_sel``)
``simw_sum``           all N members weighted by similarity (SimW Sum N)
``simw_mean_top5``     the plain average of the 5 most similar members
``simw_sum_top5``      the 5 most similar members weighted by similarity
``simw_top1``          the most similar member
``simw_random_top5``   one of the 5 most similar members drawn uniformly
=====================  ===============================================================================

Similarity = cosine similarity of the source sample's RGB feature (temporal mean of the I3D features of the
training clip) and the member's target RGB feature (collected in the pseudo-labelling pass). Similarity
weights are the similarities clipped at 0 and normalised to sum to 1 (uniform if all are <= 0) so that the
aggregate stays on the flow scale; the paper does not spell out the normalisation (INFERRED).
Classes with an empty bank keep the source sample's own flow.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from data import store
from data.atomic import atomic_write

AGGREGATIONS = ("random", "mean", "simw_sum", "simw_mean_top5", "simw_sum_top5", "simw_top1", "simw_random_top5")


class FlowMemoryBank:
    """Per-class bounded store of the most confident pseudo-labelled target videos (``flow_memory_bank``)."""

    def __init__(self, num_classes: int, capacity: int = 60, aggregation: str = "random", top_k: int = 5):
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}; choose from {AGGREGATIONS}")
        if capacity < 1:
            raise ValueError(f"bank capacity must be >= 1, got {capacity}")
        self.num_classes, self.capacity, self.aggregation, self.top_k = num_classes, capacity, aggregation, top_k
        self.members: list[np.ndarray] = [np.zeros(0, np.int64) for _ in range(num_classes)]
        self.pseudo_labels = np.zeros(0, np.int64)
        self.confidences = np.zeros(0, np.float32)
        self.features: torch.Tensor | None = None  # num_targets x D (normalised), or None
        self.flows: dict[int, torch.Tensor] = {}    # target index -> flow clip 2 x T x H x W

    # -- filling ------------------------------------------------------------------------------------------
    def refresh(self, pseudo_labels, confidences, features: torch.Tensor | None = None) -> None:
        """Rebuild the bank from one pseudo-labelling pass over all target videos.

        ``pseudo_labels`` / ``confidences`` (num_targets,) index the target list; ``features`` num_targets x D
        are the target RGB features (needed by the ``simw_*`` modes). Per class the ``capacity`` most
        confident videos are kept (ties broken by the lower target index). Flow clips are attached afterwards
        with ``set_flows`` (only members need them).
        """
        labels = np.asarray(pseudo_labels, np.int64)
        conf = np.asarray(confidences, np.float32)
        if labels.shape != conf.shape:
            raise ValueError(f"pseudo_labels {labels.shape} and confidences {conf.shape} differ in shape")
        self.pseudo_labels, self.confidences = labels, conf
        order = np.lexsort((np.arange(len(conf)), -conf))  # most confident first, stable
        self.members = []
        for c in range(self.num_classes):
            of_class = order[labels[order] == c]
            self.members.append(of_class[: self.capacity].astype(np.int64))
        if self.aggregation.startswith("simw") and features is None:
            raise ValueError(f"aggregation {self.aggregation!r} needs the target RGB features")
        self.features = None if features is None else F.normalize(features.float(), dim=1)
        self.flows = {}

    def member_indices(self) -> np.ndarray:
        """Target indices of all bank members, class by class."""
        return np.concatenate(self.members) if self.members else np.zeros(0, np.int64)

    def set_flows(self, indices, flows) -> None:
        """Attach the flow clips (each 2 x T x H x W, in [-1, 1]) of bank members ``indices``."""
        for i, f in zip(np.asarray(indices).tolist(), flows):
            self.flows[int(i)] = f

    @property
    def size(self) -> int:
        return int(sum(len(m) for m in self.members))

    def class_sizes(self) -> np.ndarray:
        return np.array([len(m) for m in self.members], np.int64)

    def in_bank(self) -> np.ndarray:
        mask = np.zeros(len(self.pseudo_labels), bool)
        mask[self.member_indices()] = True
        return mask

    def snapshot(self, target_ids=None, target_labels=None) -> dict:
        """Arrays for the per-epoch HDF5 snapshot: target ids, pseudo labels, confidences, bank membership
        (and the true labels when known, so bank precision can be computed later)."""
        n = len(self.pseudo_labels)
        out = {"target_ids": np.asarray(list(target_ids) if target_ids is not None else [str(i) for i in range(n)],
                                        dtype=object),
               "pseudo_labels": self.pseudo_labels, "confidences": self.confidences, "in_bank": self.in_bank()}
        if target_labels is not None:
            out["labels"] = np.asarray(target_labels, np.int64)
        return out

    # -- retrieval ----------------------------------------------------------------------------------------
    def weights(self, label: int, source_feature: torch.Tensor | None, rng: np.random.Generator):
        """(member target indices, weights summing to 1) of the flow clip for one source sample of class
        ``label``; empty arrays when the class bank is empty."""
        members = self.members[label]
        n = len(members)
        if n == 0:
            return members, np.zeros(0, np.float64)
        mode = self.aggregation
        if mode == "random":
            return members[[int(rng.integers(n))]], np.ones(1)
        if mode == "mean":
            return members, np.full(n, 1.0 / n)
        if source_feature is None or self.features is None:
            raise ValueError(f"aggregation {mode!r} needs source and target RGB features")
        sims = (self.features[torch.as_tensor(members)] @ F.normalize(source_feature.float().cpu(), dim=0)).numpy()
        sims = sims.astype(np.float64)
        if mode == "simw_sum":
            return members, _similarity_weights(sims)
        k = min(self.top_k, n)
        top = np.argsort(-sims, kind="stable")[:k]
        if mode == "simw_top1":
            return members[top[:1]], np.ones(1)
        if mode == "simw_random_top5":
            return members[[top[int(rng.integers(k))]]], np.ones(1)
        if mode == "simw_mean_top5":
            return members[top], np.full(k, 1.0 / k)
        return members[top], _similarity_weights(sims[top])  # simw_sum_top5

    def retrieve(self, labels, source_flows: torch.Tensor, source_features: torch.Tensor | None,
                 rng: np.random.Generator) -> torch.Tensor:
        """Replace each source flow (B x 2 x T x H x W) by the aggregate of its class bank; samples whose class
        bank is empty keep their own flow."""
        out = source_flows.clone()
        for b, label in enumerate(torch.as_tensor(labels).tolist()):
            feature = None if source_features is None else source_features[b]
            idx, w = self.weights(label, feature, rng)
            if len(idx) == 0:
                continue
            clips = torch.stack([self.flows[int(i)] for i in idx]).to(out.device, torch.float32)
            if clips.shape[1:] != out.shape[1:]:
                raise ValueError(f"bank flow clips {tuple(clips.shape[1:])} do not match training flow clips "
                                 f"{tuple(out.shape[1:])}: evaluation crop/frames must match training")
            weights = torch.as_tensor(w, dtype=torch.float32, device=out.device)
            out[b] = (weights.view(-1, 1, 1, 1, 1) * clips).sum(dim=0).to(out.dtype)
        return out


def _similarity_weights(sims: np.ndarray) -> np.ndarray:
    w = np.clip(sims, 0, None)
    total = w.sum()
    return w / total if total > 0 else np.full(len(sims), 1.0 / len(sims))


# --------------------------------------------------------------------------------------------------------
# Snapshot files (one per epoch after warm-up).

def write_bank_snapshot(path, arrays: dict, attrs: dict | None = None) -> None:
    """Write the snapshot arrays to HDF5 atomically (temporary file beside it, fsync, rename), each with its
    checksum as the store writes them (data.store.check_hdf5 verifies them)."""
    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            for name, value in arrays.items():
                store.write_checked(f, name, value)
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
            store.seal_attrs(f)
            f.attrs["complete"] = 1

    atomic_write(path, write)


def read_bank_snapshot(path) -> dict:
    with h5py.File(path, "r") as f:
        out = {}
        for name, ds in f.items():
            value = ds[()]
            if ds.dtype.kind == "O":
                value = np.array([v.decode() if isinstance(v, bytes) else v for v in value], dtype=object)
            out[name] = value
        out["attrs"] = dict(f.attrs)
    return out
