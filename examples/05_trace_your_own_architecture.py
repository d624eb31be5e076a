"""Trace an architecture of your own and read the symmetry report.

The report lists every neuron space (which parameter axes it indexes, which ops tie its
neurons together), then the ops that broke symmetry (their neurons stay fixed) and the
numerical verification.

Run: python examples/05_trace_your_own_architecture.py
Same from the shell, for a model in your own file:
    nfncompile trace my_file.py:make_net --input-shape 2,1,8,8 -o spec.yaml --draw graph.png
"""

import torch
from torch import nn

import nfncompile as nfc


class MyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.block1 = nn.Conv2d(8, 8, 3, padding=1)
        self.block2 = nn.Conv2d(8, 8, 3, padding=1)
        self.side = nn.Conv2d(8, 4, 1)
        self.extra = nn.Conv2d(8, 3, 1)
        self.head = nn.Linear(8 + 4 + 3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = h + self.block2(torch.relu(self.block1(h)))  # residual: ties stem and block2
        s = torch.relu(self.side(h))
        s = torch.cat([2 * s[:, :2], s[:, 2:]], dim=1)  # channels 0-1 and 2-3 treated apart
        e = torch.cumsum(self.extra(h), dim=1)  # depends on channel order: breaks symmetry
        features = torch.cat([h, s, e], dim=1).mean((2, 3))
        return self.head(features)


torch.manual_seed(0)
spec, report = nfc.trace_with_report(MyNet(), torch.randn(2, 1, 8, 8))
print(report)

# What to read in it:
print(
    "stem and block2 share a space:", spec["block2.weight"].axes[0] == spec["stem.weight"].axes[0]
)
print("side's output axis, split in two by the slicing:", spec["side.weight"].axes[0])
for b in report.broken:
    print(f"broken by {b.op}: {b.reason}; fixed neurons of {', '.join(b.neurons)}")
print("extra's output axis is fixed:", spec["extra.weight"].axes[0] is None)
print(f"verification max error: {report.verification.max_error:.1e}")
