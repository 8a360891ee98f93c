"""The RefineNet-style decoder blocks MiDaS and Depth Anything V2 (DPT) share, under
upstream's key names (``resConfUnit1``, ``resConfUnit2``, ``out_conv``), so both families'
checkpoints load into them unchanged."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ResidualConvUnit(nn.Module):
    """ReLU-conv-ReLU-conv with a skip connection (upstream ResidualConvUnit(_custom), bn=False)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1, bias=True)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(F.relu(x))))
        return out + x


class FusionBlock(nn.Module):
    """Upstream FeatureFusionBlock(_custom): fuse the skip, refine, resize, project to
    ``out_features``. The resize is bilinear with ``align_corners=True`` (as both upstreams
    set it): x2, or to ``size`` (the next level's, as Depth Anything V2 passes it)."""

    def __init__(self, features: int, out_features: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, out_features, 1, bias=True)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, size=None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(x)
