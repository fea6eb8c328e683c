"""Parts that several of the ported networks share, with the parameter names their official code gives them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, fused: bool) -> torch.Tensor:
    """softmax(q k^T * scale) v over (..., tokens, dim) tensors: PyTorch's fused attention, or written out (what
    models/rewrites' `explicit_attention` switches to for ONNX, through the module's `fused_attn`)."""
    if fused:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v


class Attention(nn.Module):
    """Multi-head self-attention (`qkv`, `proj`); `out_dim` (T2T-ViT's token transformer) makes q, k, v and the
    output another width than the input, with the scale still from the input width's heads."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, out_dim: int | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.out_dim = out_dim or dim
        self.scale = (dim // num_heads) ** -0.5
        self.fused_attn = True
        self.qkv = nn.Linear(dim, self.out_dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(self.out_dim, self.out_dim)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v: (B, heads, tokens, head width) each."""
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.out_dim // self.num_heads)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)

    def merge(self, y: torch.Tensor) -> torch.Tensor:
        """(B, heads, tokens, head width) -> the projected (B, tokens, out_dim)."""
        return self.proj(y.transpose(1, 2).reshape(y.shape[0], y.shape[2], self.out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.heads(x)
        return self.merge(attend(q, k, v, self.scale, self.fused_attn))


class ConvStem(nn.Module):
    """Patch embedding by convolutions (LV-ViT's `PatchEmbed4_2`, DeepViT's `PatchEmbed_CNN`): a 7x7 stride-2
    convolution, `convs - 1` 3x3 ones, each without bias and followed by BatchNorm and ReLU, then a patch/2
    convolution with stride patch/2 to the embedding width: (B, embed_dim, H / patch, W / patch)."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int = 16, width: int = 64, convs: int = 3):
        super().__init__()
        for i in range(1, convs + 1):
            conv = (nn.Conv2d(in_chans, width, 7, stride=2, padding=3, bias=False) if i == 1 else
                    nn.Conv2d(width, width, 3, stride=1, padding=1, bias=False))
            setattr(self, f"conv{i}", conv)
            setattr(self, f"bn{i}", nn.BatchNorm2d(width))
        self.convs = convs
        self.relu = nn.ReLU()
        self.proj = nn.Conv2d(width, embed_dim, patch_size // 2, stride=patch_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.convs + 1):
            x = self.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
        return self.proj(x)


class Classifier(nn.Module):
    """What every port's whole model shares: `forward` is `forward_head(forward_features(x))`, and the head reads the
    class token (`pool = "token"`) or the mean of the features over `mean_dims` (`pool = "mean"`)."""

    pool = "token"
    mean_dims: tuple[int, ...] = (1,)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0] if self.pool == "token" else x.mean(dim=self.mean_dims)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def add_norm_and_head(self, embed_dim: int, num_classes: int) -> None:
        """The final LayerNorm (eps 1e-6) and the classifier, registered after the blocks as the official models do,
        then the official initialization: truncated normal position embeddings and class token, init_weights."""
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_weights)

    def through_blocks(self, tokens: torch.Tensor) -> torch.Tensor:
        """A plain ViT's trunk (T2T-ViT, LV-ViT, DeepViT): the class token ahead of `tokens`, the position
        embeddings, every block, the final norm."""
        x = with_class_token(tokens, self.cls_token, self.pos_embed)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def with_class_token(tokens: torch.Tensor, cls_token: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
    """The class token ahead of the tokens (B, N, C), plus the position embeddings."""
    return torch.cat((cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1) + pos_embed


def init_weights(module: nn.Module) -> None:
    """The official repositories' initialization (timm's ViT of 2021): truncated normal Linear weights, zero biases,
    LayerNorms at one and zero."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """The official training scripts' checkpoints (timm's CheckpointSaver: `state_dict_ema` / `state_dict`, keys
    under `module.`) as a plain state dict, as `vitserve.models.weights` unwraps every checkpoint; a plain one as it
    is."""
    from vitserve.models.weights import unwrap

    return unwrap(state_dict, "the checkpoint")


def official_cfg(url: str = "", **kwargs) -> dict:
    """A timm pretrained config: the official eval transform (224 px, crop 0.9, bicubic, ImageNet mean and std
    unless given) and where the authors release the weights (`url`, a file to download; or `origin_url`, a page to
    download from by hand)."""
    return {"url": url, "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None, "crop_pct": 0.9,
            "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
            "classifier": "head", **kwargs}


def register_variants(module_name: str, create, variants: dict[str, dict]) -> None:
    """Registers with timm one entry point per variant (its name -> the keyword arguments `create` takes besides
    `variant` and `pretrained`), as functions of the module `module_name` (timm reads its `default_cfgs`). Keyword
    arguments given to timm.create_model override the variant's."""
    from timm.models import register_model

    for name, arguments in variants.items():
        def entry(pretrained: bool = False, _name=name, _arguments=arguments, **kwargs):
            return create(_name, pretrained, **{**_arguments, **kwargs})

        entry.__name__ = entry.__qualname__ = name
        entry.__module__ = module_name
        register_model(entry)
