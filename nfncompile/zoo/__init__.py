"""Model zoos from embedded data: many trained networks, stored as safetensors shards.

Takes a zoo YAML spec; generates, stores and reads back populations of small CNNs trained on
scikit-learn's bundled digits, or SIRENs fitted to them.

- :mod:`.config`: the zoo specs (:class:`CNNZooConfig`, :class:`INRZooConfig`,
  :func:`load_zoo_config`, :func:`config_from_dict`)
- :mod:`.data`: the embedded digits, splits, pixel grids, PSNR
- :mod:`.cnn`, :mod:`.inr`: vectorised training of one shard of CNNs / SIRENs
- :mod:`.stack`, :mod:`.optim`: models stacked in one tensor and the batched optimiser
  (:class:`BatchedOptimizer`) that trains them
- :mod:`.store`: the directory format (shards, manifests, ``metadata.csv``, sha256)
- :mod:`.generate`: :func:`generate_zoo` (parallel, resumable, splittable), :func:`make_shard`
- :mod:`.reader`: :func:`load_zoo` and the :class:`Zoo` it returns

May import: the contract, nn, architectures, declarative.
"""

from .config import CNNZooConfig, INRZooConfig, ZooConfig, config_from_dict, load_zoo_config
from .generate import ZooReport, default_workers, generate_zoo, make_shard
from .optim import BatchedOptimizer
from .reader import Zoo, load_zoo
from .stack import ParamStack
from .store import FORMAT, FORMAT_VERSION, shard_name

__all__ = [
    "CNNZooConfig",
    "INRZooConfig",
    "ZooConfig",
    "load_zoo_config",
    "config_from_dict",
    "generate_zoo",
    "make_shard",
    "default_workers",
    "ZooReport",
    "load_zoo",
    "Zoo",
    "BatchedOptimizer",
    "ParamStack",
    "shard_name",
    "FORMAT",
    "FORMAT_VERSION",
]
