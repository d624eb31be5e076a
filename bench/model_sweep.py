"""Every published model of one of torchvision's tasks (or a list of timm's or Hugging Face
transformers'): trace, build, size and equivariance of a linear-basis NF-Layer, one model per
row.

Per model (random init, no download, ``eval()``, one input of ``--size`` pixels, or the
model's own size where it takes no other: timm's ``fixed_input_size``, torchvision's vision
transformers 224; at least the smallest size torchvision's weights for it accept, their
``min_size``, e.g. Inception-v3's 75; a clip of 8 frames for video models, 16 frames of 224
pixels for S3D and MViT; two images of at least 128 pixels for optical flow; transformers' models at their
config's image size, or 8 token ids; where the trace fails and the model's own forward refuses
that image too, the smallest image of twice, four times ... its side that it accepts, the row
saying so: ``ok (at 128 px)``): ``trace s`` (``nfc.trace`` with its verification), the
parameter tensors and derived spaces, ``build s`` (``NFLinear(spec, C, C, basis="linear")``
at ``--channels``, goal < 5 s), ``/model`` (the layer's weights over the model's), and
``equiv``: the largest error of ``nfncompile.testing.assert_equivariant`` on a 2-channel
layer (float64, random group elements drawn from the spec). A model that fails prints the
exception's first line; one that takes longer than ``--timeout`` seconds prints ``TIMEOUT``;
one whose check would not fit in memory (about :data:`BYTES_PER_WEIGHT` per model weight:
features, outputs, gradients and permuted copies in float64) prints ``SKIP`` before it is
traced. The last line counts them.

Needs torchvision (or timm, or transformers) installed, which nfncompile does not depend on;
transformers' models are built from small configs (:data:`TRANSFORMERS`)::

    python bench/model_sweep.py [--source torchvision|segmentation|video|optical_flow|timm|transformers]
                                [--models a,b] [--channels 16] [--mode np] [--size 64]
                                [--timeout 300]

Model code that is no package (a checkout of a repository of models) is swept with ``--source
code --path DIR --models module:callable,module:callable(args, key=value)``, e.g. the CIFAR
models of kuangliu/pytorch-cifar: ``--path pytorch-cifar --models
"models:ResNet18,models:VGG('VGG11')" --size 32``.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import signal
import sys
import time
import warnings

import torch

import nfncompile as nfc
from nfncompile.nn.linear import available_memory
from nfncompile.testing import assert_equivariant

#: timm models of the families the catalogue does not write itself (the default list)
TIMM = (
    "resnet50d,efficientnet_b0,mobilenetv3_large_100,convnext_atto,regnety_002,"
    "vit_tiny_patch16_224,deit_tiny_patch16_224,densenet121,dla34,ghostnet_100,"
    "hrnet_w18_small,cspresnet50,rexnet_100,mixnet_s,levit_128s,poolformer_s12,resnest14d,"
    "res2net50_14w_8s,xception41,edgenext_xx_small,efficientformer_l1,fastvit_t8,"
    "mobilevit_xxs,repvgg_a0,seresnext26d_32x4d"
)
#: models whose name says they need 224-pixel inputs (fixed patch grids, window sizes), for
#: torchvision (timm's models say so in their ``pretrained_cfg``)
FULL_INPUT = ("vit", "deit", "swin", "maxvit", "levit", "coat", "efficientformer", "fastvit")
#: torchvision's video models that pool over a fixed (2, 7, 7) window: 16 frames of 224 pixels
FULL_CLIP = ("s3d", "mvit")
#: torchvision's model subpackages other than classification (``--source``)
TORCHVISION_TASKS = ("segmentation", "video", "optical_flow")
#: Hugging Face transformers models (``--source transformers``): class -> its config's keyword
#: arguments, made small (random init, nothing downloaded)
_STAGES = {"hidden_sizes": [16, 32, 64, 128], "depths": [1, 1, 1, 1], "num_labels": 10}
_VIT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "image_size": 32, "patch_size": 8}  # fmt: skip
_TEXT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
         "intermediate_size": 64, "vocab_size": 64, "max_position_embeddings": 32}  # fmt: skip
_MOE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 64,
        "max_position_embeddings": 32, "num_experts_per_tok": 2}  # fmt: skip
TRANSFORMERS = {
    "ResNetForImageClassification": {"embedding_size": 16, **_STAGES},
    "ConvNextForImageClassification": _STAGES,
    "ConvNextV2ForImageClassification": _STAGES,
    "RegNetForImageClassification": {"embedding_size": 16, "groups_width": 8, **_STAGES},
    "BitForImageClassification": {
        **_STAGES,
        "embedding_size": 32,
        "hidden_sizes": [32, 64, 96, 128],
        "num_groups": 8,
    },
    "PoolFormerForImageClassification": _STAGES,
    "SegformerForImageClassification": {
        **_STAGES,
        "num_attention_heads": [1, 1, 2, 4],
        "decoder_hidden_size": 32,
    },
    "ViTForImageClassification": {**_VIT, "num_labels": 10},
    "DeiTForImageClassification": {**_VIT, "num_labels": 10},
    "BeitForImageClassification": {**_VIT, "num_labels": 10, "use_relative_position_bias": True},
    "Dinov2Model": _VIT,
    "SwinForImageClassification": {
        "image_size": 32,
        "patch_size": 4,
        "embed_dim": 16,
        "depths": [1, 1],
        "num_heads": [1, 2],
        "window_size": 4,
        "num_labels": 10,
    },
    "MobileNetV2ForImageClassification": {
        "image_size": 32,
        "depth_multiplier": 0.35,
        "num_labels": 10,
    },
    "MobileViTForImageClassification": {
        "image_size": 64,
        "hidden_sizes": [16, 24, 32],
        "num_labels": 10,
        "neck_hidden_sizes": [8, 8, 16, 16, 24, 32, 64],
    },
    "EfficientNetForImageClassification": {
        "image_size": 32,
        "width_coefficient": 0.25,
        "depth_coefficient": 0.2,
        "hidden_dim": 320,
        "num_labels": 10,
    },
    "LevitForImageClassification": {
        "image_size": 64,
        "hidden_sizes": [32, 48, 64],
        "num_attention_heads": [1, 2, 2],
        "depths": [1, 1, 1],
        "key_dim": [8, 8, 8],
        "num_labels": 10,
    },
    "GPT2Model": {
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 2,
        "vocab_size": 50,
        "n_positions": 16,
        "use_cache": False,
    },
    "BertModel": {**_VIT, "vocab_size": 50, "max_position_embeddings": 16},
    # mixtures of experts: 3-D expert weights run by grouped_mm (Mixtral, Qwen-MoE, DeepSeek;
    # GPT-OSS's gate and up units interleaved), Switch Transformers' separate expert modules
    "MixtralModel": {**_MOE, "num_local_experts": 4},
    "Qwen2MoeModel": {
        **_MOE,
        "num_experts": 4,
        "moe_intermediate_size": 16,
        "shared_expert_intermediate_size": 32,
    },
    "DeepseekV3Model": {
        **_MOE,
        "n_routed_experts": 4,
        "moe_intermediate_size": 16,
        "n_shared_experts": 1,
        "first_k_dense_replace": 1,
        "n_group": 1,
        "topk_group": 1,
        "kv_lora_rank": 8,
        "q_lora_rank": 8,
        "qk_rope_head_dim": 4,
        "qk_nope_head_dim": 4,
        "v_head_dim": 8,
    },
    "GptOssModel": {
        **_MOE,
        "num_local_experts": 4,
        "head_dim": 8,
        "layer_types": ["full_attention", "sliding_attention"],
        "sliding_window": 4,
    },
    # rotary variants: partial rotary (the first part of each head's dims rotated) with
    # separate projections (Phi, StableLM) or one laid out per head (GPT-NeoX, Persimmon),
    # GPT-J's interleaved pairs, Falcon's legacy per-head layout
    "GPTNeoXModel": {**_TEXT, "rotary_pct": 0.25},
    "PhiModel": {**_TEXT, "partial_rotary_factor": 0.5},
    "StableLmModel": {**_TEXT, "partial_rotary_factor": 0.25},
    "PersimmonModel": {**_TEXT, "partial_rotary_factor": 0.5},
    "GPTJModel": {
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 4,
        "rotary_dim": 4,
        "vocab_size": 64,
        "n_positions": 32,
    },
    "FalconModel": {
        **_TEXT,
        "new_decoder_architecture": False,
        "multi_query": False,
        "parallel_attn": False,
        "bias": True,
    },
    # grouped-query attention (2 key/value heads for 4 query heads), one projection sliced
    # into [q | k | v] under RoPE, and multi-query attention (one key/value head)
    "LlamaModel": {**_TEXT, "num_key_value_heads": 2},
    "Phi3Model": {**_TEXT, "num_key_value_heads": 2, "pad_token_id": 0},
    "Qwen2Model": {**_TEXT, "num_key_value_heads": 1},
    "SwitchTransformersEncoderModel": {
        "d_model": 32,
        "d_kv": 8,
        "d_ff": 64,
        "num_layers": 2,
        "num_heads": 4,
        "vocab_size": 64,
        "num_experts": 4,
        "encoder_sparse_step": 1,
        "expert_capacity": 8,
    },
    # CTRL rebinds its position buffer in its forward; CANINE's float64 outputs are NaN (a
    # float32 mask scaled by float64's smallest value): verified in float32
    "CTRLModel": {"n_embd": 32, "n_layer": 2, "n_head": 4, "dff": 64, "vocab_size": 64},
    "CanineModel": {**_TEXT, "vocab_size": 64},
}
#: the text models among them (an input of 8 token ids)
TEXT = ("GPT2Model", "BertModel", "MixtralModel", "Qwen2MoeModel", "DeepseekV3Model",
        "GptOssModel", "GPTNeoXModel", "PhiModel", "StableLmModel", "PersimmonModel",
        "GPTJModel", "FalconModel", "LlamaModel", "Phi3Model", "Qwen2Model",
        "SwitchTransformersEncoderModel", "CTRLModel", "CanineModel")  # fmt: skip


#: peak memory of one model's row per model weight (measured: ResNet-50 2.4 GB for 25.6M
#: weights, RegNet-Y-8GF 3.6 GB for 39M), plus :data:`BASE_BYTES` for torch itself
BYTES_PER_WEIGHT = 90
BASE_BYTES = 2**29


class Timeout(Exception):
    pass


def _too_large(model: torch.nn.Module) -> str | None:
    """Why ``model``'s row would not fit in the memory available, or ``None``."""
    avail = available_memory()
    numel = sum(t.numel() for t in model.state_dict().values())
    need = BASE_BYTES + BYTES_PER_WEIGHT * numel
    if avail is None or need <= avail:
        return None
    return (
        f"SKIP {numel / 1e6:.0f}M weights need about {need / 2**30:.1f} GiB, "
        f"{avail / 2**30:.1f} GiB available"
    )


def _alarm(*_) -> None:
    raise Timeout


def factories(source: str, names: list | None):
    """``(name, zero-argument factory)`` for each model of ``source``."""
    if source == "torchvision" or source in TORCHVISION_TASKS:
        import torchvision.models as tvm

        module = tvm if source == "torchvision" else getattr(tvm, source)
        # a segmentation model would download its backbone's ImageNet weights by default
        kwargs = {"weights_backbone": None} if source == "segmentation" else {}
        for n in names or tvm.list_models(module=module):
            yield n, lambda n=n: tvm.get_model(n, weights=None, **kwargs)
    elif source == "code":
        # model code that is no package (a repository checkout on --path): module:callable
        for n in names or ():
            yield n, lambda n=n: _from_code(n)
    elif source == "transformers":
        import transformers

        for n in names or TRANSFORMERS:
            cls = getattr(transformers, n)
            yield n, lambda cls=cls, n=n: cls(cls.config_class(**TRANSFORMERS.get(n, {})))
    else:
        import timm

        for n in names or TIMM.split(","):
            yield n, lambda n=n: timm.create_model(n, pretrained=False)


def _from_code(name: str) -> torch.nn.Module:
    """The model ``module:callable`` or ``module:callable(literal, ..., key=literal)`` makes,
    its module imported from ``sys.path`` (``--path`` is put first)."""
    module, _, call = name.partition(":")
    fn, _, rest = call.partition("(")
    node = ast.parse(f"f({rest}" if rest else "f()", mode="eval").body
    args = [ast.literal_eval(a) for a in node.args]
    kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    return getattr(importlib.import_module(module), fn)(*args, **kwargs)


def input_size(model: torch.nn.Module, name: str, size: int) -> int:
    """The image size to trace ``model`` at: its own where it accepts no other (timm's
    ``pretrained_cfg`` says ``fixed_input_size``; torchvision's vision transformers, by name),
    else ``size``."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("fixed_input_size") and cfg.get("input_size"):
        return int(cfg["input_size"][-1])
    return 224 if any(k in name for k in FULL_INPUT) else size


def example_input(model: torch.nn.Module, name: str, source: str, size: int) -> object:
    """One example input for a model of ``source``: an image batch, a clip (video: 8 frames,
    or 16 of 224 pixels for S3D and MViT), or two images of at least 128 pixels, a multiple
    of 8 (optical flow: RAFT's correlation pyramid halves the 1/8-size features three times)."""
    if source == "video":
        if any(k in name for k in FULL_CLIP):
            return torch.randn(1, 3, 16, 224, 224)
        return torch.randn(1, 3, 8, size, size)
    if source == "optical_flow":
        side = max(128, -(-size // 8) * 8)
        return (torch.randn(1, 3, side, side), torch.randn(1, 3, side, side))
    if source == "transformers":
        if name in TEXT:
            return torch.randint(0, model.config.vocab_size, (1, 8))
        side = getattr(model.config, "image_size", size)
        return (
            torch.randn(1, 3, side, side)
            if isinstance(side, int)
            else torch.randn(1, 3, size, size)
        )
    side = size if source == "code" else input_size(model, name, size)
    if source in ("torchvision", "segmentation"):
        side = max(side, min_side(name))
    return torch.randn(1, 3, side, side)


def min_side(name: str) -> int:
    """The smallest image side torchvision's weights for model ``name`` accept (their
    ``min_size`` metadata: nothing is downloaded), or 1 where torchvision has no such weights."""
    try:
        import torchvision.models as tvm

        return int(tvm.get_model_weights(name).DEFAULT.meta["min_size"][-1])
    except (ImportError, ValueError, KeyError, AttributeError):
        return 1


#: the largest image side :func:`larger_image` tries
LARGEST_SIDE = 320


def larger_image(model: torch.nn.Module, x: object) -> torch.Tensor | None:
    """Where the trace of ``model`` at image batch ``x`` failed: the smallest image of twice,
    four times ... its side (up to :data:`LARGEST_SIDE`) that the model's own forward accepts,
    where it refuses ``x`` itself (an input below its own padding arithmetic, e.g.
    Inception's 75 pixels); ``None`` where it accepts ``x`` (the failure was the trace's), or
    ``x`` is no image batch."""

    def accepts(t: torch.Tensor) -> bool:
        try:
            with torch.no_grad():
                model(t)
        except Exception:  # the model's own refusal, whatever it raises
            return False
        return True

    if not isinstance(x, torch.Tensor) or x.ndim != 4 or accepts(x):
        return None
    side = x.shape[-1] * 2
    while side <= LARGEST_SIDE:
        bigger = torch.randn(*x.shape[:2], side, side)
        if accepts(bigger):
            return bigger
        side *= 2
    return None


def sweep_one(make, name: str, args) -> list:
    torch.manual_seed(0)
    model = make().eval()
    skip = _too_large(model)
    if skip:
        return [skip]
    x = example_input(model, name, args.source, args.size)
    t0 = time.perf_counter()
    note = ""
    try:
        spec = nfc.trace(model, x, mode=args.mode)
    except nfc.TraceError:
        x = larger_image(model, x)
        if x is None:
            raise
        t0, note = time.perf_counter(), f" (at {x.shape[-1]} px)"
        spec = nfc.trace(model, x, mode=args.mode)
    t1 = time.perf_counter()
    layer = nfc.NFLinear(spec, args.channels, args.channels, mode=args.mode, basis="linear")
    t2 = time.perf_counter()
    ratio = layer.num_params / sum(p.numel for p in spec.params)
    small = nfc.NFLinear(spec, 2, 2, mode=args.mode, basis="linear")
    err = assert_equivariant(small, spec, in_channels=2, batch=1, trials=1)
    return [
        f"{t1 - t0:.1f}",
        str(len(spec.params)),
        str(len(spec.spaces)),
        f"{t2 - t1:.2f}",
        f"{ratio:.2f}x",
        f"{err:.0e}",
        "ok" + note,
    ]


def _names(models: str) -> list:
    """``--models`` split at the commas outside parentheses (``m:VGG('VGG11'),m:LeNet``)."""
    names, depth, cur = [], 0, ""
    for ch in models + ",":
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            names += [cur] if cur else []
            cur = ""
        else:
            cur += ch
    return names


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sources = ("torchvision", *TORCHVISION_TASKS, "timm", "transformers", "code")
    ap.add_argument("--source", choices=sources, default="torchvision")
    ap.add_argument(
        "--path", default="", help="--source code: the directory its --models import from"
    )
    ap.add_argument(
        "--models", default="", help="comma-separated (default: all / TIMM / TRANSFORMERS)"
    )
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--mode", choices=("np", "hnp"), default="np")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--timeout", type=int, default=300)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    signal.signal(signal.SIGALRM, _alarm)
    names = _names(args.models) or None
    if args.source == "code":
        if not names:
            ap.error("--source code needs --models module:callable,...")
        sys.path.insert(0, args.path or ".")
    try:
        models = list(factories(args.source, names))
    except ImportError as e:
        package = args.source if args.source in ("timm", "transformers") else "torchvision"
        print(f"model_sweep: {e}; install {package} to run this sweep", file=sys.stderr)
        return 2
    head = ("model", "trace s", "tensors", "spaces", "build s", "/model", "equiv", "")
    print(f"# {args.source}, mode {args.mode}, C={args.channels}, linear basis")
    width = max(30, *(len(n) + 1 for n, _ in models))
    print(f"{head[0]:<{width}}" + "".join(f"{h:>9}" for h in head[1:]))
    counts: dict = {}
    for name, make in models:
        signal.alarm(args.timeout)
        try:
            row = sweep_one(make, name, args)
        except Timeout:
            row = ["TIMEOUT"]
        except Exception as e:  # a sweep reports every failure and goes on
            first = str(e).splitlines()[0][:200] if str(e) else ""
            row = [f"FAIL {type(e).__name__}: {first}"]
        finally:
            signal.alarm(0)
        status = row[-1].split()[0]
        counts[status] = counts.get(status, 0) + 1
        cells = "".join(f" {c:>8}" for c in row) if len(row) > 1 else row[0]
        print(f"{name:<{width}}" + cells)
        sys.stdout.flush()
    print("# " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return 0 if set(counts) <= {"ok", "SKIP"} else 1


if __name__ == "__main__":
    sys.exit(main())
