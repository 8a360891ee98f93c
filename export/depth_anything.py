"""Depth Anything V2 (Small; relative and metric), re-implemented on timm.

The module tree mirrors upstream DepthAnything/Depth-Anything-V2 ``DepthAnythingV2`` so the
official ``.pth`` files load with ``strict=True`` under their own key names: ``pretrained``
is timm's ``vit_small_patch14_dinov2`` (the same DINOv2 ViT-S/14 parameters under the same
names, plus upstream's ``mask_token``), ``depth_head`` the DPT head written here. The metric
variant differs only in the head's last activation (Sigmoid, times ``max_depth`` metres).

Two places where a plain re-implementation exports a model that runs at one size only:

- The position embedding. Upstream (DINOv2 ``interpolate_pos_encoding``) resamples its 37x37
  grid bicubic (a=-0.75, no antialias) by *scale factor* ``(g + 0.1) / 37`` per axis, so the
  sample positions follow that factor, not the out/in size ratio, and even an axis that
  stays at 37 patches is resampled; only a 37x37 grid is added unchanged. It computes the
  factor as Python floats, which a traced export freezes, and a traced tensor as
  ``scale_factor`` does not export. ``upstream_pos_embed`` builds the same resampling as
  two small weight matrices from the traced grid size (Range, Floor, Equal: every op
  exports with dynamic H/W) and blends them to the identity at 37x37.
- The head's final resize: upstream's ``int(patch_h * 14)`` is a Python int in a trace;
  here the size is the input's own (traced) height and width.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from runtime.model.model_description import ModelDescription

from .blocks import FusionBlock

_CUBIC_A = -0.75  # torch's bicubic kernel (upsample_bicubic2d), as upstream runs it


def _cubic_weights(t: torch.Tensor) -> list[torch.Tensor]:
    """torch's ``get_cubic_upsample_coefficients`` for fractional offsets ``t``: the weights
    of the samples at floor - 1, floor, floor + 1, floor + 2."""
    a = _CUBIC_A

    def near(x: torch.Tensor) -> torch.Tensor:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: torch.Tensor) -> torch.Tensor:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _resample_matrix(out_len: torch.Tensor, n_in: int, offset: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(out x n_in) weights of ``F.interpolate(scale_factor=(out + offset) / n_in,
    mode="bicubic", align_corners=False)`` along one axis, and the (out x n_in) matrix that
    is the identity when out == n_in. Built in float64 from ``out_len`` (a 0-d tensor: in a
    trace, a size read from the graph, so the export follows the input's size)."""
    i = torch.arange(out_len, dtype=torch.float64)
    scale = n_in / (out_len.to(torch.float64) + offset)  # torch samples at 1 / scale_factor
    src = (i + 0.5) * scale - 0.5
    first = torch.floor(src)
    cols = torch.arange(n_in, dtype=torch.float64)
    matrix = torch.zeros_like(src)[:, None] * cols  # (out x n_in) zeros, traced shape
    for k, weight in enumerate(_cubic_weights(src - first)):
        index = torch.clamp(first + (k - 1), 0, n_in - 1)  # edge samples repeat, as torch reads them
        matrix = matrix + weight[:, None] * (index[:, None] == cols).to(torch.float64)
    return matrix, (i[:, None] == cols).to(torch.float64)


def upstream_pos_embed(pos_embed: torch.Tensor, n: int, grid_h: torch.Tensor | int, grid_w: torch.Tensor | int,
                       offset: float) -> torch.Tensor:
    """``pos_embed`` (1, 1 + n*n, D) for a grid_h x grid_w patch grid, exactly as upstream's
    DINOv2 ``interpolate_pos_encoding`` (see the module docstring); exportable at any size."""
    grid_h, grid_w = torch.as_tensor(grid_h), torch.as_tensor(grid_w)  # ints in eager mode
    rows, rows_eye = _resample_matrix(grid_h, n, offset)
    cols, cols_eye = _resample_matrix(grid_w, n, offset)
    unchanged = ((grid_h == n) & (grid_w == n)).to(torch.float64)  # upstream adds the n x n grid as is
    rows = unchanged * rows_eye + (1 - unchanged) * rows
    cols = unchanged * cols_eye + (1 - unchanged) * cols
    grid = pos_embed[0, 1:].reshape(n, n, -1)
    patch = torch.einsum("hi,ijd,wj->hwd", rows.to(grid.dtype), grid, cols.to(grid.dtype))
    return torch.cat([pos_embed[:, :1], patch.reshape(1, -1, pos_embed.shape[-1])], dim=1)


class _Backbone(nn.Module):
    """timm's DINOv2 ViT-S/14 run as upstream's ``get_intermediate_layers(x, layers,
    norm=True)``: patch tokens after the given blocks, through the final LayerNorm, as NCHW
    maps. The timm model's parts are held under upstream's names (``cls_token``,
    ``pos_embed``, ``patch_embed``, ``blocks``, ``norm``), so ``pretrained.*`` keys load
    unchanged; timm's own position-embedding resampling differs from upstream's, so the
    blocks are run here, after ``upstream_pos_embed``."""

    def __init__(self, network: Mapping) -> None:
        super().__init__()
        import timm  # imported here so `export.depth_anything` can be imported without timm

        vit = timm.create_model(network["backbone"], pretrained=False, dynamic_img_size=True)
        self.cls_token, self.pos_embed = vit.cls_token, vit.pos_embed
        # In upstream's file; DINOv2 uses it only for masked training. Held so the file loads strictly.
        self.mask_token = nn.Parameter(torch.zeros(1, vit.embed_dim))
        self.patch_embed = vit.patch_embed  # dynamic_img_size: any multiple of 14, NHWC out
        self.blocks, self.norm = vit.blocks, vit.norm
        self.embed_dim = vit.embed_dim
        self.layers = tuple(network["layers"])
        self.offset = float(network["interpolate_offset"])
        self.grid = int(network["pos_embed_grid"])  # pos_embed holds a grid x grid layout (+ the class token)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        tokens = self.patch_embed(x)  # (N, grid_h, grid_w, D); in a trace the sizes are traced tensors
        n, grid_h, grid_w, dim = tokens.shape
        pos = upstream_pos_embed(self.pos_embed, self.grid, grid_h, grid_w, self.offset)
        tokens = torch.cat([self.cls_token.expand(n, -1, -1), tokens.flatten(1, 2)], dim=1) + pos
        maps = []
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if i in self.layers:
                patch = self.norm(tokens)[:, 1:]
                maps.append(patch.reshape(n, grid_h, grid_w, dim).permute(0, 3, 1, 2))
        return maps


class _DPTHead(nn.Module):
    """Upstream DPTHead (use_bn=False, use_clstoken=False): four token maps -> one depth map."""

    def __init__(self, dim: int, features: int, out_channels: list[int], metric: bool) -> None:
        super().__init__()
        c = out_channels
        self.projects = nn.ModuleList([nn.Conv2d(dim, ch, 1) for ch in c])
        self.resize_layers = nn.ModuleList([nn.ConvTranspose2d(c[0], c[0], 4, stride=4),
                                            nn.ConvTranspose2d(c[1], c[1], 2, stride=2),
                                            nn.Identity(),
                                            nn.Conv2d(c[3], c[3], 3, stride=2, padding=1)])
        self.scratch = nn.Module()
        for i, ch in enumerate(c, start=1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(ch, features, 3, padding=1, bias=False))
            setattr(self.scratch, f"refinenet{i}", FusionBlock(features, features))
        self.scratch.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        self.scratch.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 1, 1),
            nn.Sigmoid() if metric else nn.ReLU(),  # metric: a fraction of max_depth; relative: never below 0
        )

    def forward(self, maps: list[torch.Tensor], out_size) -> torch.Tensor:
        s = self.scratch
        levels = [resize(project(m)) for m, project, resize in zip(maps, self.projects, self.resize_layers, strict=True)]
        l1, l2, l3, l4 = (getattr(s, f"layer{i}_rn")(lv) for i, lv in enumerate(levels, start=1))
        path = s.refinenet4(l4, size=l3.shape[2:])
        path = s.refinenet3(path, l3, size=l2.shape[2:])
        path = s.refinenet2(path, l2, size=l1.shape[2:])
        path = s.refinenet1(path, l1)
        path = F.interpolate(s.output_conv1(path), size=out_size, mode="bilinear", align_corners=True)
        return s.output_conv2(path)


class DepthAnythingV2(nn.Module):
    """Depth Anything V2 as its description says: input ``(N, 3, H, W)`` normalised RGB with
    H and W multiples of the patch size (14); output ``(N, H, W)``, relative inverse depth
    (larger is nearer) or, for a metric description, metres in (0, max_depth)."""

    def __init__(self, description: ModelDescription) -> None:
        super().__init__()
        net, out = description.network, description.output
        self.multiple_of = description.input.multiple_of
        self.max_depth = float(out.max_depth) if out.metric else None
        self.pretrained = _Backbone(net)
        self.depth_head = _DPTHead(self.pretrained.embed_dim, net["features"], list(net["out_channels"]), out.metric)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and (x.shape[-2] % self.multiple_of or x.shape[-1] % self.multiple_of):
            raise ValueError(f"input height and width must be multiples of {self.multiple_of}, got {tuple(x.shape[-2:])}")
        depth = self.depth_head(self.pretrained(x), x.shape[-2:])
        if self.max_depth is not None:
            depth = depth * self.max_depth
        return depth.squeeze(1)
