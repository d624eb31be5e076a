"""Trace a CNN into a weight-space spec and check the symmetry it found.

Run: python examples/01_trace_a_cnn.py
"""

import torch

import nfncompile as nfc
from nfncompile.architectures.catalogue import small_cnn

torch.manual_seed(0)
model = small_cnn().eval()  # the Small CNN Zoo network: 3 convs, global pool, linear
x = torch.randn(4, 1, 8, 8)

# Trace with torch.fx, derive the neuron spaces, verify them numerically.
spec, report = nfc.trace_with_report(model, x)
print(report)
print(spec.to_yaml())  # what `nfncompile trace small_cnn -o spec.yaml` writes

# Draw one group element. In "hnp" mode the input pixels and output classes stay put,
# so the permuted network must compute exactly the same function.
perm = spec.sample_permutation(torch.Generator().manual_seed(0), mode="hnp")
permuted = small_cnn().eval()
permuted.load_state_dict(perm.apply_state_dict(model.state_dict()))

moved = (permuted.conv2.weight - model.conv2.weight).abs().max().item()
error = (permuted(x) - model(x)).abs().max().item()
print(f"{perm}: weights moved by up to {moved:.3f}")
print(f"function unchanged: max |f_perm(x) - f(x)| = {error:.1e}")
