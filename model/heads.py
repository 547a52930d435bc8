"""Heads on top of the I3D streams."""
from __future__ import annotations

import torch
from torch import nn


class VideoPaceHead(nn.Module):
    """Video pace prediction head (Sec. 3.3, Eq. 5; the released code's ``VideoPacePredictor``).

    A small classifier applied to every time step of the target RGB I3D features (B x D x T'); its logits
    are averaged over time (``.mean(dim=-1)`` in the released code) into B x C_vp pace logits, where class
    r - 1 means pace r. ``hidden=0`` gives a single linear layer; the released head's layout is not public.
    """

    def __init__(self, in_features: int, num_paces: int = 5, hidden: int = 0, dropout: float = 0.0):
        super().__init__()
        self.num_paces = num_paces
        layers: list[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
        if hidden > 0:
            layers += [nn.Conv1d(in_features, hidden, 1), nn.ReLU(inplace=True), nn.Conv1d(hidden, num_paces, 1)]
        else:
            layers += [nn.Conv1d(in_features, num_paces, 1)]
        self.classifier = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """B x D x T' features -> B x num_paces logits (averaged over time)."""
        return self.classifier(features).mean(dim=-1)
