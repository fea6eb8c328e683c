"""The alias table against timm: architectures exist, preprocessing is the one timm's weights were trained with."""

from __future__ import annotations

import pytest

from vitserve.errors import UnknownModelError
from vitserve.models.architectures import registered_timm
from vitserve.models.catalogue import SPECS, list_specs, resolve

REQUIRED = ["swin_t", "swin_s", "swin_b", "vit_b_16", "vit_s_16", "deit_t", "deit_s", "deit_b", "deit_s_distilled",
            "swinv2_t", "swinv2_cr_t", "pvt_v2_b0", "twins_svt_s", "twins_pcpvt_s", "cait_xxs24",
            "tnt_s", "mvitv2_t"]


def test_required_aliases_present():
    assert set(REQUIRED) <= set(SPECS)


@pytest.mark.parametrize("spec", [s for s in list_specs() if s.pretrained_tag], ids=lambda s: s.name)
def test_preprocessing_matches_timm_pretrained_cfg(spec):
    """Also vitserve's own architectures' (models/architectures/): their family's alias and their registration
    say the same."""
    cfg = registered_timm().models.get_pretrained_cfg(spec.hub_name)
    assert cfg is not None, f"{spec.hub_name} is not a timm pretrained config"
    pre = spec.preprocess
    assert (tuple(cfg.input_size), tuple(cfg.mean), tuple(cfg.std)) == (pre.input_size, pre.mean, pre.std)
    assert (cfg.crop_pct, cfg.interpolation, cfg.crop_mode) == (pre.crop_pct, pre.interpolation, pre.crop_mode)
    assert cfg.num_classes == spec.num_classes


def test_timm_names_accepted():
    spec = resolve("swin_base_patch4_window12_384")
    assert spec.preprocess.input_size == (3, 384, 384) and spec.preprocess.crop_pct == 1.0
    assert resolve("vit_small_patch16_224.augreg_in21k_ft_in1k").pretrained_tag == "augreg_in21k_ft_in1k"
    squashed = resolve("vit_base_patch16_clip_384.laion2b_ft_in12k_in1k").preprocess  # timm squashes its eval images
    assert (squashed.crop_mode, squashed.crop_pct) == ("squash", 1.0)


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UnknownModelError, match="Did you mean: swin_t"):
        resolve("swin_tt")
    with pytest.raises(UnknownModelError, match="vitserve models"):
        resolve("definitely_not_a_model")
