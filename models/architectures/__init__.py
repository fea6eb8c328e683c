"""Networks timm does not have, written here with the parameter names and shapes of their authors' repositories
(so that checkpoints trained there load as they are), one module per family. Each registers its variants with
timm's model registry, with the official eval preprocessing and release URLs as timm pretrained configs: once this
package is imported, `timm.create_model` builds them like timm's own, and the rest of vitserve does not tell them
apart. `registered_timm()` is how the rest of models/ gets timm."""

from __future__ import annotations

import timm

from vitserve.models.architectures import ceit, cswin, deepvit, localvit, lvvit, rest, shuffle, t2t_vit

ARCHITECTURES = (t2t_vit, lvvit, deepvit, rest, ceit, cswin, shuffle, localvit)


def registered_timm():
    """timm, with the architectures above in its model registry (they register when this package is imported)."""
    return timm
