"""T2T-ViT (models/architectures/t2t_vit.py): the official parameter names and shapes, the Performer's random-
feature attention and the sinusoids as the paper and yitu-opensource/T2T-ViT define them, the official training
script's checkpoints, and the released weights' download."""

from __future__ import annotations

import argparse
import http.server
import json
import math
import threading
from functools import partial
from pathlib import Path

import pytest
import torch

from vitserve.errors import WeightsUnavailableError
from vitserve.models import weights as w
from vitserve.models.architectures import t2t_vit
from vitserve.models.build import build_model
from vitserve.models.catalogue import SPECS, with_overrides

OFFICIAL = Path(__file__).parent / "official"


@pytest.mark.parametrize("name", ["t2t_vit_7", "t2t_vit_t_14"])
def test_parameter_names_and_shapes_are_the_official_ones(name):
    """The state dict, key by key, as the official t2t_vit_7 (Performer tokens-to-token) and t2t_vit_t_14 (plain
    attention there) name and shape it (tests/models/official/, read from the official code's models)."""
    official = json.loads((OFFICIAL / f"{name}.json").read_text())
    model = build_model(SPECS[name], random_init=True).model
    assert {key: list(value.shape) for key, value in model.state_dict().items()} == official


def test_performer_is_the_random_feature_attention():
    """The Performer layer against the formula written out: phi(x) = exp(w x - |x|^2 / 2) / sqrt(m) with the
    layer's fixed features w; y = phi(Q) (phi(K)^T V) / (phi(Q) sum_t phi(k_t) + eps); the projected y added to V,
    then the MLP. The projection splits into k, q, v in that order (the official one): q and k swapped breaks it."""
    torch.manual_seed(0)
    layer = t2t_vit.TokenPerformer(147, 64).eval()
    layer.apply(t2t_vit._init_weights)  # the model's initialization: q and k of norm ~2, as trained (with PyTorch's
    with torch.no_grad():  # default for Linear, larger: phi(q).phi(k) underflows to 0 and attention is lost)
        for name, p in layer.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * (0.01 if name.startswith("kqv") else 0.1))
    x = torch.randn(2, 50, 147)

    def reference(k_first: bool) -> torch.Tensor:
        kqv = layer.kqv(layer.norm1(x))
        k, q, v = kqv[..., :64], kqv[..., 64:128], kqv[..., 128:]
        if not k_first:
            k, q = q, k
        m = layer.w.shape[0]
        phi = lambda t: torch.exp(torch.einsum("btd,md->btm", t, layer.w) - 0.5 * (t ** 2).sum(-1, keepdim=True)) \
            / math.sqrt(m)  # noqa: E731
        qp, kp = phi(q), phi(k)
        numerator = torch.einsum("btm,bsm,bsd->btd", qp, kp, v)
        denominator = torch.einsum("btm,bsm->bt", qp, kp)[..., None] + 1e-8
        assert denominator.min() > 1e-2  # attention weights far above the epsilon: they count
        out = v + layer.proj(numerator / denominator)
        return out + layer.mlp(layer.norm2(out))

    with torch.no_grad():
        ours, right, swapped = layer(x), reference(True), reference(False)
    assert (ours - right).abs().max() < 1e-5
    assert (ours - swapped).abs().max() > 1e-2
    assert layer.w.shape == (32, 64) and not layer.w.requires_grad  # m = out_dim * kernel_ratio 0.5, never trained


def test_feature_matrix_is_orthogonal_rows_scaled_by_sqrt_m():
    layer = t2t_vit.TokenPerformer(147, 64)
    gram = layer.w @ layer.w.t()
    assert torch.allclose(gram, 32 * torch.eye(32), atol=1e-4)


def test_sinusoids():
    """Channel 2i is sin(p / 10000^(2i/d)), channel 2i + 1 the cosine of the same angle."""
    table = t2t_vit.sinusoids(197, 256)[0].double()
    for p, i in ((0, 0), (1, 0), (5, 3), (196, 127), (42, 60)):
        angle = p / 10000 ** (2 * i / 256)
        assert table[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
        assert table[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


@pytest.mark.parametrize("size,sides,tokens", [(224, (56, 28), 196), (384, (96, 48), 576)])
def test_soft_splits_take_the_input_to_a_sixteenth(size, sides, tokens):
    """7x7 stride 4, then 3x3 stride 2 twice: 224 px is 56, 28, then 14x14 tokens (the released 384 px T2T-ViT-14
    has 24x24 and a class token: 577 positions)."""
    model = build_model(with_overrides(SPECS["t2t_vit_14"], img_size=size), random_init=True).model
    assert model.tokens_to_token.sides == sides and model.tokens_to_token.num_patches == tokens
    assert model.pos_embed.shape == (1, tokens + 1, 384)
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, 1000)


def test_official_training_checkpoint_loads(tmp_path):
    """The official main.py saves through timm's CheckpointSaver: `state_dict` and `state_dict_ema` (the weights
    its README evaluates), keys under `module.` when trained distributed, the arguments as a Namespace, in a file
    named .pth.tar."""
    source = build_model(SPECS["t2t_vit_7"], random_init=True).model.state_dict()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in source.items()}
    path = tmp_path / "71.7_T2T_ViT_7.pth.tar"
    torch.save({"epoch": 309, "arch": "t2t_vit_7", "args": argparse.Namespace(model="t2t_vit_7", lr=1e-3),
                "state_dict": {f"module.{k}": v for k, v in source.items()},
                "state_dict_ema": {f"module.{k}": v for k, v in ema.items()}}, path)
    built = build_model(SPECS["t2t_vit_7"], weights=path)
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


def test_released_weights_offline_name_the_file_and_the_options(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(w, "reachable", lambda url: False)
    with pytest.raises(WeightsUnavailableError) as error:
        build_model(SPECS["t2t_vit_7"])
    message = str(error.value)
    assert t2t_vit.RELEASES + "71.7_T2T_ViT_7.pth.tar" in message and "github.com is not reachable" in message
    assert "--weights FILE" in message and "--random-init" in message
