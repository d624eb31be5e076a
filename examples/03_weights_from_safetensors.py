"""Load weights saved by another framework (safetensors files) into WeightSpaceFeatures.

The networks here are Flax MLPs: their parameters have Flax names and layout, and numpy's
float64. A hand-written spec (specs/weight_spaces/flax_mlp.yaml) says which axis is which
neuron space; features are matched by key and cast to float32, the dtype layers are built in.

Run: python examples/03_weights_from_safetensors.py
"""

import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file
from safetensors.torch import load_file

import nfncompile as nfc
from nfncompile.errors import StateDictMismatchError

SPECS = Path(__file__).resolve().parent.parent / "specs" / "weight_spaces"
spec = nfc.WeightSpaceSpec.from_yaml(SPECS / "flax_mlp.yaml")

# What a JAX user would have written: one safetensors file per network, float64 numpy arrays,
# keys "Dense_0.kernel", ... (flax.traverse_util.flatten_dict(params, sep=".")).
rng = np.random.default_rng(0)
folder = Path(tempfile.mkdtemp())
for i in range(5):
    params = {p.name: rng.normal(size=p.shape) for p in spec.params}
    save_file(params, str(folder / f"net{i}.safetensors"))

# Read them back and stack them: checked against the spec by key, cast to float32.
state_dicts = [load_file(str(path)) for path in sorted(folder.glob("*.safetensors"))]
print(f"in the files: {state_dicts[0]['Dense_0.kernel'].dtype}")
feats = nfc.WeightSpaceFeatures.from_state_dicts(spec, state_dicts)
print(f"{feats}, dtype {feats.dtype}")
cast = max((feats[k][b, 0].double() - sd[k]).abs().max().item()
           for b, sd in enumerate(state_dicts) for k in spec.names)  # fmt: skip
print(f"float32 rounding: max |feature - file| = {cast:.1e}")
# (dtype=torch.float64 keeps float64, for layers built in float64.)

# A mistake the spec catches: PyTorch's layout ([out, in]) where Flax's was declared. (Only by
# shape: the square Dense_1.kernel would pass transposed, so verify a spec against a model of
# the same layout when you can, as examples/04 does.)
try:
    nfc.WeightSpaceFeatures.from_state_dicts(
        spec, [{k: v.T if v.dim() == 2 else v for k, v in state_dicts[0].items()}]
    )
except StateDictMismatchError as e:
    print(f"transposed kernels are rejected:\n{e}")

# An invariant NFN reads them: permuting any network's hidden neurons leaves its output alone.
torch.manual_seed(0)
nfn = torch.nn.Sequential(nfc.NFLinear(spec, 1, 8, mode="hnp"), nfc.NFPool(spec, mode="hnp"))
perm = spec.sample_permutation(torch.Generator().manual_seed(1), mode="hnp")
inv = (nfn(perm.apply(feats)) - nfn(feats)).abs().max().item()
print(f"NFN invariance error: {inv:.1e}  (output shape {tuple(nfn(feats).shape)})")
