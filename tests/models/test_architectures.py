"""The networks vitserve ports from their authors' repositories (models/architectures/): the official parameter names
and shapes, the official training scripts' checkpoints, the released weights' download or where to get them, and
the parts of LV-ViT and DeepViT that differ from a plain ViT, against their formulas written out. T2T-ViT's own
parts: tests/models/test_t2t_vit.py."""

from __future__ import annotations

import argparse
import http.server
import json
import threading
from functools import partial
from pathlib import Path

import pytest
import torch

from tests.weights import perturb
from vitserve.errors import WeightsUnavailableError
from vitserve.models import weights as w
from vitserve.models.architectures import ARCHITECTURES, deepvit, lvvit, registered_timm, t2t_vit
from vitserve.models.build import build_model
from vitserve.models.catalogue import SPECS

OFFICIAL = Path(__file__).parent / "official"
# the smallest variant of each, and of each kind where a family has two (T2T-ViT's Performer and transformer stems)
SMALLEST = ["t2t_vit_7", "t2t_vit_t_14", "lvvit_t", "deepvit_s"]


@pytest.mark.parametrize("name", SMALLEST)
def test_parameter_names_and_shapes_are_the_official_ones(name):
    """The state dict, key by key, as the official code's model names and shapes it (tests/models/official/, read
    from the official models): a checkpoint trained there loads as it is, a renamed key fails here."""
    official = json.loads((OFFICIAL / f"{name}.json").read_text())
    model = build_model(SPECS[name], random_init=True).model
    assert {key: list(value.shape) for key, value in model.state_dict().items()} == official


# Every variant's floating-point state-dict entries (parameters and BatchNorm statistics), counted on the official
# code's models (2026-12-07); the papers' tables round them (T2T-ViT-14 21.5M, LV-ViT-M 55.83M, ...)
OFFICIAL_SIZES = {
    "t2t_vit_7": 4310222, "t2t_vit_10": 5889230, "t2t_vit_12": 6941902, "t2t_vit_14": 21545550,
    "t2t_vit_19": 39177422, "t2t_vit_24": 64105934, "t2t_vit_t_14": 21541070, "t2t_vit_t_19": 39172942,
    "t2t_vit_t_24": 64101454, "lvvit_t": 8535104, "lvvit_s": 26152208, "lvvit_m": 55830928, "deepvit_s": 27313008,
    "deepvit_l": 58884252,
}


@pytest.mark.parametrize("name", OFFICIAL_SIZES)
def test_every_size_has_the_official_number_of_weights(name):
    """The larger sizes are exported nowhere in the suite: their widths, depths and heads are held here."""
    with torch.device("meta"):
        model = registered_timm().create_model(SPECS[name].timm_name)
    assert sum(v.numel() for v in model.state_dict().values() if v.is_floating_point()) == OFFICIAL_SIZES[name]


def test_every_architecture_has_a_family_and_a_table():
    registered = {spec.timm_name for spec in SPECS.values()}
    for module in ARCHITECTURES:
        names = {cfg.split(".")[0] for cfg in module.default_cfgs}
        assert names <= registered and names <= set(OFFICIAL_SIZES), names - registered
        assert any(name in SMALLEST for name in names)


@pytest.mark.parametrize("name", ["t2t_vit_7", "lvvit_t"])
def test_official_training_checkpoint_loads(tmp_path, name):
    """The official training scripts save through timm's CheckpointSaver: `state_dict` and `state_dict_ema` (the EMA
    weights are taken), keys under `module.` when trained distributed, the arguments as a Namespace, in a file named
    .pth.tar."""
    source = build_model(SPECS[name], random_init=True).model.state_dict()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in source.items()}
    path = tmp_path / f"{name}.pth.tar"
    torch.save({"epoch": 309, "arch": name, "args": argparse.Namespace(model=name, lr=1e-3),
                "state_dict": {f"module.{k}": v for k, v in source.items()},
                "state_dict_ema": {f"module.{k}": v for k, v in ema.items()}}, path)
    built = build_model(SPECS[name], weights=path)
    loaded = built.model.state_dict()
    assert all(torch.equal(loaded[k], ema[k]) for k in ema)
    assert built.weights["source"] == "file"


@pytest.fixture
def release_server(tmp_path):
    """An HTTP server on this machine serving tmp_path/releases (the released checkpoint's stand-in)."""
    folder = tmp_path / "releases"
    folder.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_released_weights_are_downloaded_once_into_torchs_cache(release_server, tmp_path, monkeypatch):
    folder, base = release_server
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    torch.save({"state_dict": {"x": torch.ones(3)}}, folder / "released.pth.tar")
    path = w.release_file(base + "released.pth.tar")
    assert path == tmp_path / "torch-home" / "hub" / "checkpoints" / "released.pth.tar"
    assert torch.equal(w.read_state_dict(path)["x"], torch.ones(3))
    (folder / "released.pth.tar").unlink()  # the second time, from the cache
    assert w.release_file(base + "released.pth.tar") == path
    with pytest.raises(WeightsUnavailableError, match="(?s)HTTP Error 404.*--weights FILE"):
        w.release_file(base + "missing.pth.tar")


@pytest.mark.parametrize("name,url", [("t2t_vit_7", t2t_vit.RELEASES + "71.7_T2T_ViT_7.pth.tar"),
                                      ("lvvit_s", lvvit.RELEASES + "1.0/lvvit_s-26M-224-83.3.pth.tar")])
def test_released_weights_offline_name_the_file_and_the_options(tmp_path, monkeypatch, name, url):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(w, "reachable", lambda address: False)
    with pytest.raises(WeightsUnavailableError) as error:
        build_model(SPECS[name])
    message = str(error.value)
    assert url in message and "github.com is not reachable" in message
    assert "--weights FILE" in message and "--random-init" in message


def test_weights_released_on_a_page_say_where():
    """DeepViT's weights are on Google Drive: a page, not a file to fetch."""
    with pytest.raises(WeightsUnavailableError, match="(?s)by hand.*" + deepvit.RELEASES["deepvit_s"].replace(
            "?", r"\?") + ".*--weights FILE"):
        build_model(SPECS["deepvit_s"])


def _tiny(cls, **kwargs):
    torch.manual_seed(0)
    model = perturb(cls(img_size=64, num_classes=7, embed_dim=48, depth=3, num_heads=4, **kwargs).eval())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name or "head" in name:
                p.add_(torch.randn_like(p) * 0.5)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn_like(b) * 0.1)
            if name.endswith("running_var"):
                b.copy_(torch.rand_like(b) + 0.5)
    return model


def test_lvvit_eval_head_adds_half_the_largest_token_prediction():
    """LV-ViT at eval: the class token's prediction plus, per class, 0.5 times the largest auxiliary prediction over
    the patch tokens; branches divided by skip_lam. Written out from the features: the mean over the tokens, or
    the class token left out of the aux head's maximum, breaks it."""
    model = _tiny(lvvit.LVViT, skip_lam=2.0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        right = model.head(features[:, 0]) + 0.5 * model.aux_head(features[:, 1:]).max(dim=1).values
        mean = model.head(features[:, 0]) + 0.5 * model.aux_head(features[:, 1:]).mean(dim=1)
        with_class = model.head(features[:, 0]) + 0.5 * model.aux_head(features).max(dim=1).values
        ours = model(x)
    assert (ours - right).abs().max() < 1e-6
    assert (ours - mean).abs().max() > 1e-2 and (ours - with_class).abs().max() > 1e-3
    block, tokens = model.blocks[0], torch.randn(2, 17, 48)
    with torch.no_grad():
        half = tokens + block.attn(block.norm1(tokens)) / 2
        assert (block(tokens) - (half + block.mlp(block.norm2(half)) / 2)).abs().max() < 1e-6


def test_deepvit_re_attention_mixes_heads_then_normalises():
    """Re-attention written out: the softmax maps A (B, heads, N, N) become BN(sum_g W[h, g] A[g] + b[h]) times the
    scale (deepvit_s), then weigh the values. A transposed mixing matrix breaks it; blocks before the last
    `re_attention_blocks` attend plainly."""
    model = _tiny(deepvit.DeepViT, re_attention_blocks=2, scale_maps=True)
    assert [block.attn.re_attend for block in model.blocks] == [False, True, True]
    attn = model.blocks[2].attn
    x = torch.randn(2, 17, 48)

    def reference(transposed: bool) -> torch.Tensor:
        q, k, v = attn.heads(x)
        maps = (q @ k.transpose(-2, -1) * attn.scale).softmax(-1)
        mix = attn.reatten_matrix.weight[:, :, 0, 0]
        mixed = torch.einsum("hg,bgnm->bhnm", mix.t() if transposed else mix, maps)
        mixed = mixed + attn.reatten_matrix.bias[None, :, None, None]
        bn = attn.var_norm
        per_head = {name: getattr(bn, name)[None, :, None, None] for name in ("running_mean", "running_var",
                                                                               "weight", "bias")}
        normalised = (mixed - per_head["running_mean"]) / torch.sqrt(per_head["running_var"] + bn.eps)
        normalised = normalised * per_head["weight"] + per_head["bias"]
        return attn.merge(normalised * attn.scale @ v)

    with torch.no_grad():
        ours, right, transposed = attn(x), reference(False), reference(True)
    assert attn.reatten_scale == attn.scale == 12 ** -0.5
    assert (ours - right).abs().max() < 1e-5 and (ours - transposed).abs().max() > 1e-3
