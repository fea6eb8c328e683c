"""T2T-ViT (Yuan et al., ICCV 2021), yitu-opensource/T2T-ViT's models (models/architectures/t2t_vit.py): a
tokens-to-token stem (soft splits with a Performer, or plain attention in the `_t_` variants) before ViT blocks;
the official eval transform (crop 0.9, bicubic)."""

from __future__ import annotations

from vitserve.models.spec import imagenet

VARIANTS = tuple(
    imagenet(name, name, "in1k", f"T2T-ViT{'_t' if '_t_' in name else ''}-{name.rsplit('_', 1)[1]}, "
             f"{params} params")
    for name, params in (("t2t_vit_7", "4.3M"), ("t2t_vit_10", "5.9M"), ("t2t_vit_12", "6.9M"),
                         ("t2t_vit_14", "21.5M"), ("t2t_vit_19", "39.2M"), ("t2t_vit_24", "64.1M"),
                         ("t2t_vit_t_14", "21.5M"), ("t2t_vit_t_19", "39.2M"), ("t2t_vit_t_24", "64.1M"))
)
