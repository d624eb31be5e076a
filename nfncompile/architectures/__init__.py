"""The source networks: the catalogue of architectures whose weights NFNs read, by family, and
the resolver of model names (catalogue name, factory name or ``MODULE:FACTORY``).

Takes a name (and keyword arguments); returns an ``nn.Module`` and its example input shape.
It sits below :mod:`nfncompile.declarative` (a YAML spec may name a model to trace) and above
:mod:`nfncompile.nn` (whose activation table its factories use).

- :mod:`.catalogue`: :class:`Architecture`, :data:`CATALOGUE`, :data:`FACTORIES`, :func:`get`,
  :func:`names`
- :mod:`.resolve`: :func:`load` (a model name -> a built model)
- one file per family: :mod:`.mlps` (``mlp``, ``siren``), :mod:`.cnns` (``lenet``,
  ``small_cnn``, ``vgg``), :mod:`.resnets` (``resnet_cifar``, ``resnet20``), :mod:`.densenets`
  (``densenet_block``), :mod:`.mobilenets` (``mobilenetv2_block``), :mod:`.squeeze_excite`
  (``se_block``), :mod:`.unets` (``unet``), :mod:`.efficientnets` (``efficientnet_block``,
  ``tf_efficientnet``), :mod:`.grouped` (``resnext_block``,
  ``regnet_x``), :mod:`.convnext` (``convnext_block``), :mod:`.selective_kernel`
  (``sk_block``), :mod:`.standardised` (``std_conv_block``), :mod:`.blur_pool`
  (``blurpool_cnn``), :mod:`.space_to_depth` (``s2d_stem``), :mod:`.vits` (``vit``), and
  torchvision's ImageNet
  topologies: :mod:`.torchvision_resnets` (``resnet18``, ``resnet50``),
  :mod:`.torchvision_mobilenets` (``mobilenetv2``), :mod:`.torchvision_densenets`
  (``densenet121``), :mod:`.torchvision_shufflenets` (``shufflenetv2``); :mod:`.args` checks
  their arguments

May import: the contract, nn.
"""

from .blur_pool import blurpool_cnn
from .catalogue import CATALOGUE, FACTORIES, Architecture, get, names
from .cnns import lenet, small_cnn, vgg
from .convnext import convnext_block
from .densenets import densenet_block
from .efficientnets import efficientnet_block, tf_efficientnet
from .grouped import regnet_x, resnext_block
from .mlps import mlp, siren
from .mobilenets import mobilenetv2_block
from .resnets import resnet20, resnet_cifar
from .resolve import load
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

__all__ = [
    "Architecture",
    "CATALOGUE",
    "FACTORIES",
    "get",
    "names",
    "load",
    "mlp",
    "siren",
    "lenet",
    "small_cnn",
    "resnet_cifar",
    "resnet20",
    "densenet_block",
    "mobilenetv2_block",
    "se_block",
    "unet",
    "vgg",
    "efficientnet_block",
    "tf_efficientnet",
    "resnext_block",
    "regnet_x",
    "convnext_block",
    "sk_block",
    "std_conv_block",
    "blurpool_cnn",
    "s2d_stem",
    "vit",
    "resnet18",
    "resnet50",
    "mobilenetv2",
    "densenet121",
    "shufflenetv2",
]
