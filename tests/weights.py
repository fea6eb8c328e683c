"""Random weights that cannot hide a wrong attention.

timm zero-initializes the post-norms of Swin V2 (`_init_respostnorm`) and of Swin V2 CR (`init_values=0`): with
random-init weights every block's attention and MLP branch is multiplied by zero, so an export that computed the
attention wrongly would still give the model's logits. It also starts position biases and q/v biases at zero and
logit scales at one value for every head, which would hide a transposed bias or swapped heads.
"""

from __future__ import annotations

import torch
from torch import nn

# parameters that timm starts at zero or at one shared value: position-bias tables and MLPs, logit scales, biases
PERTURBED = ("relative_position_bias_table", "logit_scale", "q_bias", "v_bias", "cpb", "meta_mlp", "qkv.bias")


def wake_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every LayerNorm whose weight is all zero gets weights 1 + 0.2 N(0, 1) (in place; returns the model)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm) and module.weight is not None and not module.weight.any():
                module.weight.copy_(1 + 0.2 * torch.randn(module.weight.shape, generator=generator))
    return model


def perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial position biases, logit scales, q/v biases and norm weights (in place; returns the model)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(key in name for key in PERTURBED):
                p.add_(torch.randn(p.shape, generator=generator) * 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=generator))
    return model
