"""MidasNet_small (MiDaS v2.1 small), re-implemented on timm.

The module tree mirrors upstream isl-org/MiDaS ``MidasNet_small`` so that the official
``midas_v21_small_256.pt`` state dict loads with ``strict=True`` under its own key names:
``pretrained.layer1..4`` slice the EfficientNet-Lite3 backbone, ``scratch.*`` is the
RefineNet-style decoder. Only the backbone comes from a library (timm); nothing here
needs the MiDaS GitHub code or gen-efficientnet.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from runtime.model.model_description import MIDAS_SMALL

from .blocks import FusionBlock

FEATURES = 64
# Channel counts of the four backbone taps (EfficientNet-Lite3 stages 1, 2, 4, 6).
BACKBONE_CHANNELS = (32, 48, 136, 384)


class StaticSameConv2d(nn.Conv2d):
    """A strided TF-"same" convolution with its padding fixed: constant pads, then a conv.

    timm's ``Conv2dSame`` computes the pads from the input size at run time. In ONNX that
    is a chain of Shape/Gather/Div/Ceil/Max nodes before every strided conv: 399 nodes in
    the dynamic-size graph against 194 in a fixed one, and shape arithmetic that
    quantization cannot carry (a QDQ file of it fails at run time at every size). Every
    input this network accepts has sides that are multiples of 32, so every stride-2 conv
    sees an even size, and TF-"same" padding is then a constant: a total of
    ``(kernel - 1) * dilation + 1 - stride``, the smaller half before (3x3: (0, 1), 5x5:
    (1, 2)). Same weights, same key names, same outputs on every valid size.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0,
                         conv.dilation, conv.groups, conv.bias is not None)
        self.weight, self.bias = conv.weight, conv.bias
        pads = []
        for k, s, d in zip(conv.kernel_size, conv.stride, conv.dilation, strict=True):
            total = max((k - 1) * d + 1 - s, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        self.pads = (left, right, top, bottom)  # F.pad order: last dim first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, self.pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _efficientnet_lite3() -> nn.Module:
    """timm's TF-ported EfficientNet-Lite3 with TF "same" padding, made static (see
    ``StaticSameConv2d``).

    ``tf_`` matters: the upstream weights were trained with TF-style asymmetric padding
    and batch-norm eps 1e-3; timm's non-``tf_`` variant would load but compute another
    function.
    """
    import timm  # imported here so `export.model` can be imported to read constants
    from timm.layers import Conv2dSame

    net = timm.create_model("tf_efficientnet_lite3", pretrained=False, exportable=True)
    for name, module in list(net.named_modules()):
        if isinstance(module, Conv2dSame):
            parent_name, _, attr = name.rpartition(".")
            setattr(net.get_submodule(parent_name) if parent_name else net, attr, StaticSameConv2d(module))
    return net


class _Backbone(nn.Module):
    """The four encoder stages exactly as upstream slices gen-efficientnet.

    Upstream's ``layer1`` is ``Sequential(conv_stem, bn1, act1, blocks[0], blocks[1])``. timm
    fuses the activation into ``bn1`` (BatchNormAct2d), so an ``nn.Identity`` holds index 2:
    that keeps ``pretrained.layer1.3.*`` / ``layer1.4.*`` at upstream's indices and the
    checkpoint needs no key renaming at all.
    """

    def __init__(self) -> None:
        super().__init__()
        net = _efficientnet_lite3()
        self.layer1 = nn.Sequential(net.conv_stem, net.bn1, nn.Identity(), *net.blocks[0:2])
        self.layer2 = nn.Sequential(*net.blocks[2:3])
        self.layer3 = nn.Sequential(*net.blocks[3:5])
        self.layer4 = nn.Sequential(*net.blocks[5:9])


class _Upsample2x(nn.Module):
    """Bilinear x2 inside the output head; upstream's ``Interpolate`` uses align_corners=False."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class MidasNetSmall(nn.Module):
    """MiDaS v2.1 small: input ``(N, 3, H, W)`` normalised RGB, output ``(N, H, W)`` relative
    inverse depth (larger is nearer). H and W must be multiples of 32.

    Configuration is fixed to upstream's ``MiDaS_small`` hub entry: features=64, expand=True,
    non_negative=True, exportable backbone.
    """

    description = MIDAS_SMALL

    def __init__(self) -> None:
        super().__init__()
        f = FEATURES
        widths = (f, f * 2, f * 4, f * 8)  # "expand": each deeper level is twice as wide
        self.pretrained = _Backbone()
        self.scratch = nn.Module()
        for i, (cin, cout) in enumerate(zip(BACKBONE_CHANNELS, widths, strict=True), start=1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(cin, cout, 3, padding=1, bias=False))
        # "expand": each fusion halves the width on its way up, but the last keeps it
        self.scratch.refinenet4 = FusionBlock(widths[3], widths[3] // 2)
        self.scratch.refinenet3 = FusionBlock(widths[2], widths[2] // 2)
        self.scratch.refinenet2 = FusionBlock(widths[1], widths[1] // 2)
        self.scratch.refinenet1 = FusionBlock(widths[0], widths[0])
        self.scratch.output_conv = nn.Sequential(
            nn.Conv2d(f, f // 2, 3, padding=1),
            _Upsample2x(),
            nn.Conv2d(f // 2, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 1, 1),
            nn.ReLU(),  # non_negative: inverse depth is never below zero
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        step = self.description.input.multiple_of
        if not torch.jit.is_tracing() and (x.shape[-2] % step or x.shape[-1] % step):
            raise ValueError(f"input height and width must be multiples of {step}, got {tuple(x.shape[-2:])}")
        p, s = self.pretrained, self.scratch
        l1 = p.layer1(x)
        l2 = p.layer2(l1)
        l3 = p.layer3(l2)
        l4 = p.layer4(l3)
        path = s.refinenet4(s.layer4_rn(l4))
        path = s.refinenet3(path, s.layer3_rn(l3))
        path = s.refinenet2(path, s.layer2_rn(l2))
        path = s.refinenet1(path, s.layer1_rn(l1))
        return s.output_conv(path).squeeze(1)
