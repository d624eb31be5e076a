"""Generic training: :func:`fit` a model (an NFN or any ``nn.Module``) and :func:`predict` with it.

- :mod:`.config`: :class:`TrainConfig` (the hyperparameters), :func:`resolve_device`
- :mod:`.collate`: :func:`collate` (batches of tensors and weight-space items)
- :mod:`.loop`: :func:`fit` (AdamW, best-epoch selection, resume, DDP) and its :class:`FitResult`
- :mod:`.inference`: :func:`predict`
- :mod:`.checkpoint`: the checkpoint format, :func:`load_best`, :func:`read_state`
"""

from .checkpoint import BEST, CHECKPOINT_FORMAT, LAST, STATE, load_best, read_state
from .collate import collate
from .config import TrainConfig, resolve_device
from .inference import predict
from .loop import FitResult, fit

__all__ = [
    "TrainConfig",
    "FitResult",
    "fit",
    "predict",
    "collate",
    "resolve_device",
    "load_best",
    "read_state",
    "CHECKPOINT_FORMAT",
    "LAST",
    "BEST",
    "STATE",
]
