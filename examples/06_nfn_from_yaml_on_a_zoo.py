"""Build an NFN from a YAML spec and train it on a (small) model zoo.

The zoo: 32 small CNNs trained on scikit-learn's digits with random hyperparameters, each with
its test accuracy (the `quick:` form of specs/zoos/digits_cnn.yaml, a few seconds). The NFN
reads a CNN's weights and predicts its test accuracy; it is invariant to permutations of
the CNN's hidden channels by construction.

Run: python examples/06_nfn_from_yaml_on_a_zoo.py
The full experiment, with baselines and a report: nfncompile run specs/experiments/generalization.yaml
"""

import tempfile
from pathlib import Path

import torch

import nfncompile as nfc
from nfncompile.experiments.train import TrainConfig, fit
from nfncompile.files import loads_yaml
from nfncompile.zoo import generate_zoo, load_zoo, load_zoo_config

ROOT = Path(__file__).resolve().parent.parent
torch.manual_seed(0)

# 1. The zoo (the command line does the same: nfncompile zoo specs/zoos/digits_cnn.yaml --quick)
config = load_zoo_config(ROOT / "specs" / "zoos" / "digits_cnn.yaml", quick=True)
zoo = load_zoo(generate_zoo(config, tempfile.mkdtemp(), progress=False).directory)
print(zoo)

# 2. The NFN, from YAML (a file works the same: nfc.build("specs/nfn/small_cnn_hnp.yaml")).
NFN_YAML = """
nfn:
  weight_space: {model: small_cnn, kwargs: {channels: 8}}   # traced: the zoo's architecture
  mode: hnp
  layers:
    - {type: nf_linear, channels: 8}
    - {type: activation, fn: relu}
    - {type: nf_pool}                                      # invariant features
    - {type: mlp, hidden: [16], out_features: 1}
"""
nfn = nfc.build(loads_yaml(NFN_YAML))
print(f"NFN: {sum(p.numel() for p in nfn.parameters())} parameters")

# 3. Data: features matched to the spec by key, one scale per parameter tensor.
feats = zoo.features(nfn.spec)
feats = feats.map(lambda t: t / t[:24].std())
accuracy = torch.tensor(zoo.column("test_accuracy")).unsqueeze(1)
pairs = [(feats.map(lambda t, i=i: t[i : i + 1]), accuracy[i]) for i in range(len(zoo))]


# 4. Train on 24 networks, validate on 8 (Kendall's tau: do predictions rank the networks? On
#    8 networks a noisy number; the generalization experiment uses 1536).
def kendall_tau(pred: torch.Tensor, target: torch.Tensor) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(pred.reshape(-1), target.reshape(-1)).statistic)


result = fit(
    nfn, pairs[:24], pairs[24:],
    loss_fn=lambda out, y: torch.nn.functional.mse_loss(out, y.reshape(out.shape)),
    metric_fn=kendall_tau,
    config=TrainConfig(epochs=10, batch_size=12, lr=3e-3, device="cpu"),
    progress=False,
)  # fmt: skip
first, last = result.history[0], result.history[-1]
print(
    f"train loss: epoch 1 {first['train_loss']:.4f} -> epoch {last['epoch']} {last['train_loss']:.4f}"
)
print(f"best validation Kendall tau: {result.best_score:.2f} (epoch {result.best_epoch})")

# 5. The prediction ignores how a network's hidden channels are ordered.
nfn.eval()
perm = nfn.spec.sample_permutation(torch.Generator().manual_seed(0), mode="hnp")
with torch.no_grad():
    error = (nfn(perm.apply(feats)) - nfn(feats)).abs().max().item()
print(f"NFN invariance error: {error:.1e}")
