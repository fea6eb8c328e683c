"""The catalogue's architecture families, one module each (timm style): a module's VARIANTS are its registered
aliases, each with the eval preprocessing its weights were trained with.

Adding an architecture: a module here with its VARIANTS, and the module in FAMILIES (the order of
`vitserve models` and of README's table). A family that needs a deploy rewrite gets one in models/rewrites/.
"""

from __future__ import annotations

from vitserve.models.families import (
    cait,
    ceit,
    cswin,
    deepvit,
    deit,
    localvit,
    lvvit,
    mvitv2,
    pvt_v2,
    rest,
    shuffle,
    swin,
    swin_digits,
    swinv2,
    t2t_vit,
    tnt,
    twins,
    vit,
    volo,
)

FAMILIES = (swin, swinv2, vit, deit, pvt_v2, twins, cait, tnt, mvitv2, volo, t2t_vit, lvvit, deepvit, rest, ceit,
            cswin, shuffle, localvit, swin_digits)
