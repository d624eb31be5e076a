"""Model zoos from embedded data: many trained networks, stored as safetensors shards.

Takes a zoo YAML spec; generates, stores and reads back populations of small CNNs trained on
scikit-learn's bundled digits, or SIRENs fitted to them (:mod:`.generate`), from the embedded
data set (:mod:`.data`).

May import: the contract, nn, architectures, declarative.
"""

from .generate import Zoo, ZooReport, generate_zoo, load_zoo, load_zoo_config

__all__ = ["Zoo", "ZooReport", "generate_zoo", "load_zoo", "load_zoo_config"]
