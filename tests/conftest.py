"""Suite-wide settings.

``pytest -n 2`` runs two workers on a 2-core machine: with torch's default of one thread per
core each worker would oversubscribe the CPU (float64 depthwise convolutions in verification
slowed from 3.6 s to 64 s that way), so every worker computes on one thread.
"""

import torch

torch.set_num_threads(1)
