"""Build NF-Layers for a traced CNN and check their symmetry numerically.

Run: python examples/02_nf_layer.py
"""

import torch

import nfncompile as nfc
from nfncompile.architectures.catalogue import small_cnn

torch.manual_seed(0)
spec = nfc.trace(small_cnn(), torch.randn(2, 1, 8, 8))

# A batch of 3 networks' weights: each parameter becomes a (B=3, C=1, *shape) tensor.
feats = nfc.WeightSpaceFeatures.from_state_dicts(spec, [small_cnn().state_dict() for _ in range(3)])
print(feats)

layer = nfc.NFLinear(spec, 1, 8, mode="hnp")  # equivariant: weights in, weights out
pool = nfc.NFPool(spec, mode="hnp", in_channels=8)  # invariant: weights in, a vector out
code = layer.code.strip().splitlines()
print("\n".join(code[:12]))
print(f"... ({len(code)} lines of generated code in all)")

# Permuting the input networks' neurons permutes the layer's output the same way...
perm = spec.sample_permutation(torch.Generator().manual_seed(1), mode="hnp")
out, out_of_permuted = layer(feats), layer(perm.apply(feats))
expected = perm.apply(out)
equi = max((out_of_permuted[k] - expected[k]).abs().max().item() for k in spec.names)
print(f"NFLinear equivariance error: {equi:.1e}")

# ... and leaves the pooled features unchanged.
inv = (pool(out_of_permuted) - pool(out)).abs().max().item()
print(f"NFPool invariance error: {inv:.1e}  (pooled shape {tuple(pool(out).shape)})")
