"""Claim a symmetry by hand, let nfncompile check it, and read the failure when it is wrong.

A spec written by hand is a claim: "permuting these neurons (and the weights around them)
leaves the network's function unchanged". `nfc.verify` (or `nfncompile verify`) tests the claim
numerically with random permutations. Here the claim forgets that a residual connection ties
two layers' outputs together.

Run: python examples/04_verify_a_claimed_symmetry.py
Same check from the shell:
    nfncompile verify examples/my_models.py:residual_mlp --spec claim.yaml --input-shape 8,4
"""

import torch
from my_models import ResidualMLP  # examples/my_models.py

import nfncompile as nfc

# h = fc_in(x); h = h + fc2(relu(fc1(h))); y = fc_out(relu(h))
torch.manual_seed(0)
model = ResidualMLP().double()
x = torch.randn(8, 4, dtype=torch.float64)

# The claim: fc2's output neurons form their own space "r". They do not: fc2's output is
# added to fc_in's, neuron by neuron, so the two layers' outputs must be permuted together.
CLAIM = """
spaces:
  in:     {size: 4, role: input}
  stream: {size: 8, role: hidden}
  h:      {size: 8, role: hidden}
  r:      {size: 8, role: hidden}
  out:    {size: 3, role: output}
params:
  fc_in.weight:  {shape: [8, 4], axes: [stream, in]}
  fc_in.bias:    {shape: [8], axes: [stream]}
  fc1.weight:    {shape: [8, 8], axes: [h, stream]}
  fc1.bias:      {shape: [8], axes: [h]}
  fc2.weight:    {shape: [8, 8], axes: [r, h]}
  fc2.bias:      {shape: [8], axes: [r]}
  fc_out.weight: {shape: [3, 8], axes: [out, stream]}
  fc_out.bias:   {shape: [3], axes: [out]}
"""
claimed = nfc.WeightSpaceSpec.from_yaml(CLAIM)
report = nfc.verify(model, claimed, x)
# Which spaces fail and by how much; under each failing space, the parameters it moves and the
# first node of the model whose values stop being a mere rearrangement of the original ones:
# here the residual add, with its source line.
print(report)
print(f"claimed spec holds: {report.ok}; failing spaces: {', '.join(report.failed)}")

# The fix: fc2 writes into the residual stream, so its output axis is labelled "stream".
fixed = nfc.WeightSpaceSpec.from_yaml(CLAIM.replace("[r, h]", "[stream, h]")
                                      .replace("axes: [r]", "axes: [stream]")
                                      .replace("  r:      {size: 8, role: hidden}\n", ""))  # fmt: skip
report = nfc.verify(model, fixed, x)
print(f"fixed spec holds: {report.ok}, max error {report.max_error:.1e}")

# nfc.trace derives the same tie by itself (its spaces are named after a layer):
traced = nfc.trace(model, x)
print(
    f"traced: fc2.weight's output axis is {traced['fc2.weight'].axes[0]!r}, "
    f"fc_in.weight's is {traced['fc_in.weight'].axes[0]!r}"
)
