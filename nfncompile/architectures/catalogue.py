"""The catalogue of small source architectures: the networks whose weights NFNs process.

The factories live in one file per family (:mod:`.mlps`, :mod:`.cnns`, :mod:`.resnets`,
:mod:`.densenets`, :mod:`.mobilenets`, :mod:`.squeeze_excite`, :mod:`.unets`,
:mod:`.efficientnets`, :mod:`.grouped`, :mod:`.convnext`, :mod:`.selective_kernel`,
:mod:`.standardised`, :mod:`.blur_pool`, :mod:`.space_to_depth`, and torchvision's ImageNet
networks in :mod:`.torchvision_resnets`, :mod:`.torchvision_mobilenets`,
:mod:`.torchvision_densenets`). Every factory returns a plain ``torch.nn.Module`` (pure torch, no torchvision) with readable parameter names
(``conv1.weight``, ``fc.bias``, ...: state_dict keys matter for model zoos), keyword arguments
with small defaults so that tracing and running stay in milliseconds on a CPU, and no
data-dependent control flow in their own forwards. Some
reproduce what real model code does to a tracer: ``efficientnet_block`` calls a function
``torch.fx`` keeps opaque (stochastic depth), ``tf_efficientnet`` convs whose forward it
cannot trace (same padding); the front end handles both.

:data:`CATALOGUE` names one default instance of each, with an example input shape (batch
dim included); :func:`get` looks one up.

Examples
--------
>>> import torch
>>> arch = get("small_cnn")
>>> arch.input_shape
(2, 1, 8, 8)
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> model = arch.factory()
>>> model(torch.randn(arch.input_shape)).shape
torch.Size([2, 10])
>>> [k for k in model.state_dict()][:4]
['conv1.weight', 'conv1.bias', 'conv2.weight', 'conv2.bias']
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from .blur_pool import blurpool_cnn
from .cnns import lenet, small_cnn, vgg
from .convnext import convnext_block
from .densenets import densenet_block
from .efficientnets import efficientnet_block, tf_efficientnet
from .grouped import regnet_x, resnext_block
from .mlps import mlp, siren
from .mobilenets import mobilenetv2_block
from .resnets import resnet20, resnet_cifar
from .selective_kernel import sk_block
from .space_to_depth import s2d_stem
from .squeeze_excite import se_block
from .standardised import std_conv_block
from .torchvision_densenets import densenet121
from .torchvision_mobilenets import mobilenetv2
from .torchvision_resnets import resnet18, resnet50
from .torchvision_shufflenets import shufflenetv2
from .unets import unet
from .vits import vit

__all__ = ["Architecture", "CATALOGUE", "FACTORIES", "get", "names"]


@dataclass(frozen=True)
class Architecture:
    """A named source architecture with an example input shape.

    Attributes
    ----------
    name : str
        The catalogue key.
    factory : callable
        ``factory()`` builds a fresh model (random init; seed with ``torch.manual_seed``);
        keyword arguments override the defaults, e.g. ``get("resnet8").factory(width=4)``.
    input_shape : tuple of int
        An example input's shape, batch dim included.
    description : str
        One line for listings.

    Examples
    --------
    >>> arch = get("mlp")
    >>> arch.example_input(torch.Generator().manual_seed(0)).shape
    torch.Size([2, 16])
    """

    name: str
    factory: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    description: str

    def example_input(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """A standard-normal tensor of :attr:`input_shape`."""
        return torch.randn(self.input_shape, generator=generator)


def _arch(
    name: str, factory: Callable[..., nn.Module], shape: tuple, description: str
) -> tuple[str, Architecture]:
    return name, Architecture(name, factory, shape, description)


#: Every catalogued architecture by name, with default (small) hyperparameters.
CATALOGUE: dict[str, Architecture] = dict(
    [
        _arch("mlp", mlp, (2, 16), "MLP 16-32-32-10 with ReLU"),
        _arch("siren", siren, (2, 2), "SIREN 2-32-32-32-1, w0=30"),
        _arch(
            "lenet", lenet, (2, 1, 8, 8), "LeNet: 2 conv+pool, flatten (2x2 positions), 2 linear"
        ),
        _arch("small_cnn", small_cnn, (2, 1, 8, 8), "Small CNN Zoo CNN: 3 stride-2 convs, GAP, fc"),
        _arch(
            "resnet8",
            functools.partial(resnet_cifar, depth=8, width=8),
            (2, 3, 8, 8),
            "CIFAR ResNet-8, width 8 (one block per stage)",
        ),
        _arch("resnet20", resnet20, (2, 3, 8, 8), "CIFAR ResNet-20, width 16"),
        _arch(
            "densenet_block",
            densenet_block,
            (2, 3, 8, 8),
            "stem, DenseNet block (3 layers, growth 4, torch.cat), transition, GAP, fc",
        ),
        _arch(
            "mobilenetv2_block",
            mobilenetv2_block,
            (2, 3, 8, 8),
            "stem, MobileNetV2 inverted residual (expand 4, depthwise), GAP, fc",
        ),
        _arch("se_block", se_block, (2, 3, 8, 8), "stem, squeeze-and-excitation gate, GAP, fc"),
        _arch("unet", unet, (2, 1, 8, 8), "two-level U-Net, ConvTranspose2d + torch.cat skips"),
        _arch("vgg", vgg, (2, 3, 8, 8), "VGG-style conv-ReLU-pool stacks, MLP classifier"),
        _arch(
            "efficientnet_block",
            efficientnet_block,
            (2, 3, 8, 8),
            "stem, 2 residual MBConv blocks (depthwise, SE, wrapped stochastic depth), head, fc",
        ),
        _arch(
            "tf_efficientnet",
            tf_efficientnet,
            (2, 3, 9, 9),
            "same-padding convs (padding computed in forward), 2 MBConv blocks, head, fc",
        ),
        _arch(
            "resnext_block",
            resnext_block,
            (2, 3, 8, 8),
            "stem, ResNeXt bottleneck (grouped 3x3 conv, 4 groups of 4), GAP, fc",
        ),
        _arch(
            "regnet_x",
            regnet_x,
            (2, 3, 16, 16),
            "RegNet-X stages of grouped bottlenecks (widths 8, 16; group width 4), GAP, fc",
        ),
        _arch(
            "convnext_block",
            convnext_block,
            (2, 3, 8, 8),
            "patchify stem, ConvNeXt block (depthwise 7x7, channels-last LN + MLP), GAP, fc",
        ),
        _arch(
            "sk_block",
            sk_block,
            (2, 3, 8, 8),
            "stem, selective-kernel unit (2 paths, softmax attention over paths), GAP, fc",
        ),
        _arch(
            "std_conv_block",
            std_conv_block,
            (2, 3, 8, 8),
            "weight-standardised convs (StdConv2d, ScaledStdConv2d) in a residual block",
        ),
        _arch(
            "blurpool_cnn",
            blurpool_cnn,
            (2, 3, 8, 8),
            "two convs, each followed by an anti-aliased blur pool, GAP, fc",
        ),
        _arch(
            "s2d_stem",
            s2d_stem,
            (2, 3, 8, 8),
            "space-to-depth stem (2x2 blocks into channels), two convs, GAP, fc",
        ),
        _arch(
            "vit",
            vit,
            (2, 3, 8, 8),
            "ViT: 2x2 patches, class token, learned positions, 2 pre-norm blocks (fused qkv, "
            "2 heads), GELU MLP, head on the class token",
        ),
        # torchvision's ImageNet topologies at reduced widths (the factories' defaults give
        # the full models: bench/arch_scale.py uses those)
        _arch(
            "resnet18",
            functools.partial(resnet18, width=8, num_classes=10),
            (2, 3, 16, 16),
            "ResNet-18 topology (torchvision), width 8 (1/8 of the channels)",
        ),
        _arch(
            "resnet50",
            functools.partial(resnet50, width=8, num_classes=10),
            (2, 3, 16, 16),
            "ResNet-50 topology (torchvision, Bottlenecks), width 8 (1/8 of the channels)",
        ),
        _arch(
            "mobilenetv2",
            functools.partial(mobilenetv2, width_mult=0.5, num_classes=10),
            (2, 3, 16, 16),
            "MobileNetV2 topology (torchvision), width_mult 0.5",
        ),
        _arch(
            "densenet121",
            functools.partial(densenet121, growth=4, init_features=8, num_classes=10),
            (2, 3, 32, 32),
            "DenseNet-121 topology (torchvision), growth 4 and stem 8 (1/8)",
        ),
        _arch(
            "shufflenetv2",
            functools.partial(shufflenetv2, (8, 16, 32, 64, 64), num_classes=10),
            (2, 3, 16, 16),
            "ShuffleNetV2 topology (torchvision: split, branch, channel shuffle), stages 16-32-64",
        ),
    ]
)


#: Every factory function by name (they take keyword arguments; see each one's docstring).
FACTORIES: dict[str, Callable[..., nn.Module]] = {
    f.__name__: f
    for f in (
        mlp,
        siren,
        lenet,
        small_cnn,
        resnet_cifar,
        resnet20,
        densenet_block,
        mobilenetv2_block,
        se_block,
        unet,
        vgg,
        efficientnet_block,
        tf_efficientnet,
        resnext_block,
        regnet_x,
        convnext_block,
        sk_block,
        std_conv_block,
        blurpool_cnn,
        s2d_stem,
        vit,
        resnet18,
        resnet50,
        mobilenetv2,
        densenet121,
        shufflenetv2,
    )
}


def names() -> list[str]:
    """Catalogue names, in catalogue order."""
    return list(CATALOGUE)


def get(name: str) -> Architecture:
    """The catalogued :class:`Architecture` called ``name``.

    Raises
    ------
    ConfigError
        For an unknown name; the message lists the valid names and the nearest one.

    Examples
    --------
    >>> get("resnet20").input_shape
    (2, 3, 8, 8)
    >>> get("resnet21")
    Traceback (most recent call last):
    ...
    nfncompile.errors.ConfigError: unknown architecture 'resnet21' (did you mean 'resnet20'?); valid names: mlp, siren, lenet, small_cnn, resnet8, resnet20, densenet_block, mobilenetv2_block, se_block, unet, vgg, efficientnet_block, tf_efficientnet, resnext_block, regnet_x, convnext_block, sk_block, std_conv_block, blurpool_cnn, s2d_stem, vit, resnet18, resnet50, mobilenetv2, densenet121, shufflenetv2
    """
    try:
        return CATALOGUE[name]
    except (KeyError, TypeError):
        near = difflib.get_close_matches(str(name), CATALOGUE, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(
            f"unknown architecture {name!r}{hint}; valid names: {', '.join(CATALOGUE)}"
        ) from None
