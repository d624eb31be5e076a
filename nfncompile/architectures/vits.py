"""A small Vision Transformer (Dosovitskiy et al. 2021), written the way timm writes one.

Patches embedded by a strided conv, a learned class token and position table, pre-norm blocks
of multi-head self-attention (one fused ``qkv`` projection viewed as ``(3, heads, head_dim)``,
the pattern of timm's and torchvision's ViTs) and a GELU MLP, each added back into the residual
stream; the class token's final features go to a linear head.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .args import positives

__all__ = ["Attention", "ViTBlock", "ViT", "vit"]


class Attention(nn.Module):
    """Multi-head self-attention over ``(batch, tokens, dim)`` with a fused ``qkv`` projection.

    Parameters
    ----------
    dim : int
        Token features; a multiple of ``heads``.
    heads : int
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class ViTBlock(nn.Module):
    """``x + attn(norm1(x))``, then ``x + mlp(norm2(x))`` (pre-norm)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """Patch embedding, class token, positions, :class:`ViTBlock` s, norm, head on the class
    token. Use :func:`vit` to build one."""

    def __init__(
        self,
        image_size: int,
        patch: int,
        in_channels: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (image_size // patch) ** 2, dim) * 0.02)
        self.blocks = nn.Sequential(*[ViTBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def vit(
    image_size: int = 8,
    patch: int = 2,
    in_channels: int = 3,
    dim: int = 16,
    depth: int = 2,
    heads: int = 2,
    mlp_ratio: int = 2,
    num_classes: int = 10,
) -> ViT:
    """A small ViT on ``image_size`` x ``image_size`` images of ``patch`` x ``patch`` patches.

    Parameters
    ----------
    image_size, patch : int
        ``image_size`` a multiple of ``patch``: ``(image_size // patch)**2`` tokens and a class
        token.
    in_channels, dim, depth, heads, mlp_ratio, num_classes : int
        ``dim`` a multiple of ``heads``; the MLP's hidden layer has ``mlp_ratio * dim``.

    Examples
    --------
    >>> model = vit()
    >>> model(torch.randn(2, 3, 8, 8)).shape
    torch.Size([2, 10])
    """
    positives(
        image_size=image_size, patch=patch, in_channels=in_channels, dim=dim, depth=depth,
        heads=heads, mlp_ratio=mlp_ratio, num_classes=num_classes,
    )  # fmt: skip
    if image_size % patch:
        raise ConfigError(f"image_size ({image_size}) must be a multiple of patch ({patch})")
    if dim % heads:
        raise ConfigError(f"dim ({dim}) must be a multiple of heads ({heads})")
    return ViT(image_size, patch, in_channels, dim, depth, heads, mlp_ratio, num_classes)
