"""The networks vitserve ports from their authors' repositories (models/architectures/): the official parameter names
and shapes, the official training scripts' checkpoints, the released weights' download or where to get them, and
the parts of LV-ViT, DeepViT, ResT, CeiT, CSWin, Shuffle and LocalViT that differ from a plain ViT, against their
formulas written out. T2T-ViT's own parts: tests/models/test_t2t_vit.py."""

from __future__ import annotations

import argparse
import http.server
import json
import re
import threading
from functools import partial
from pathlib import Path

import pytest
import torch

from tests.weights import perturb
from vitserve.errors import WeightsUnavailableError
from vitserve.models import weights as w
from vitserve.models.architectures import (
    ARCHITECTURES,
    ceit,
    cswin,
    deepvit,
    localvit,
    lvvit,
    registered_timm,
    rest,
    shuffle,
    t2t_vit,
)
from vitserve.models.build import build_model
from vitserve.models.catalogue import SPECS

OFFICIAL = Path(__file__).parent / "official"
# the smallest variant of each, and of each kind where a family has two (T2T-ViT's Performer and transformer stems)
SMALLEST = ["t2t_vit_7", "t2t_vit_t_14", "lvvit_t", "deepvit_s", "rest_lite", "ceit_t", "cswin_t", "shuffle_t",
            "localvit_t"]


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
    "deepvit_l": 58884252, "rest_lite": 10510220, "rest_small": 13681628, "rest_base": 30329932,
    "rest_large": 51679036, "ceit_t": 6398504, "ceit_s": 24287912, "ceit_b": 94571432, "cswin_t": 22320552,
    "cswin_s": 34643304, "cswin_b": 77382184, "shuffle_t": 28560578, "shuffle_s": 50131922, "shuffle_b": 88472864,
    "localvit_t": 5950168, "localvit_t_se4": 9417640, "localvit_s": 22516120,
}


@pytest.mark.parametrize("name", OFFICIAL_SIZES)
def test_every_size_has_the_official_number_of_weights(name):
    """The larger sizes are exported nowhere in the suite: their widths, depths and heads are held here."""
    with torch.device("meta"):
        model = registered_timm().create_model(SPECS[name].timm_name)
    assert sum(v.numel() for v in model.state_dict().values() if v.is_floating_point()) == OFFICIAL_SIZES[name]


def test_every_architecture_has_a_family_and_a_table():
    aliases = {spec.timm_name: spec.name for spec in SPECS.values()}
    for module in ARCHITECTURES:
        names = {aliases.get(cfg.split(".")[0]) for cfg in module.default_cfgs}
        assert names <= set(OFFICIAL_SIZES), names - set(OFFICIAL_SIZES)
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
                                      ("lvvit_s", lvvit.RELEASES + "1.0/lvvit_s-26M-224-83.3.pth.tar"),
                                      ("localvit_t_se4", localvit.RELEASE + "localvit_t_se4.pth")])
def test_released_weights_offline_name_the_file_and_the_options(tmp_path, monkeypatch, name, url):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(w, "reachable", lambda address: False)
    with pytest.raises(WeightsUnavailableError) as error:
        build_model(SPECS[name])
    message = str(error.value)
    assert url in message and "github.com is not reachable" in message
    assert "--weights FILE" in message and "--random-init" in message


@pytest.mark.parametrize("name,page", [("deepvit_s", deepvit.RELEASES["deepvit_s"]), ("rest_lite", rest.RELEASES),
                                       ("ceit_t", ceit.RELEASES)])
def test_weights_released_on_a_page_say_where(name, page):
    """DeepViT's, ResT's and CeiT's weights are on Google Drive: a page, not a file to fetch."""
    with pytest.raises(WeightsUnavailableError, match="(?s)by hand.*" + re.escape(page) + ".*--weights FILE"):
        build_model(SPECS[name])


def _tiny(cls, **kwargs):
    torch.manual_seed(0)
    model = perturb(cls(num_classes=7, **kwargs).eval())
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
    model = _tiny(lvvit.LVViT, img_size=64, embed_dim=48, depth=3, num_heads=4, skip_lam=2.0)
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
    model = _tiny(deepvit.DeepViT, img_size=64, embed_dim=48, depth=3, num_heads=4, re_attention_blocks=2,
                  scale_maps=True)
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


def test_rest_attention_mixes_heads_before_the_softmax_and_normalises_after():
    """ResT's efficient attention written out: keys and values from the map shrunk by the depthwise strided
    convolution and a LayerNorm; the scaled q.k maps mixed across heads (1x1 convolution), softmax, then each map
    normalised over all its entries. Normalising before the softmax, or mixing with the transposed matrix, breaks
    it."""
    model = _tiny(rest.ResT, embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1))
    attn, x = model.stage2[0].attn, torch.randn(2, 64, 32)  # an 8x8 map, 2 heads, keys from 2x2
    with torch.no_grad():  # attention maps far from uniform
        for p in attn.parameters():
            p.add_(torch.randn_like(p) * 0.3)

    def reference(order: str) -> torch.Tensor:
        q = attn.q(x).reshape(2, 64, 2, 16).transpose(1, 2)
        reduced = attn.sr_norm(attn.sr(x.transpose(1, 2).reshape(2, 32, 8, 8)).flatten(2).transpose(1, 2))
        k, v = attn.kv(reduced).reshape(2, 4, 2, 2, 16).permute(2, 0, 3, 1, 4)
        mix = attn.transform_conv.weight[:, :, 0, 0]
        maps = torch.einsum("hg,bgnm->bhnm", mix.t() if order == "transposed" else mix, q @ k.transpose(-2, -1) / 4)
        maps = maps + attn.transform_conv.bias[None, :, None, None]

        def normalise(m):
            return (m - m.mean(dim=(2, 3), keepdim=True)) / torch.sqrt(m.var(dim=(2, 3), unbiased=False,
                                                                            keepdim=True) + 1e-5)
        maps = normalise(maps).softmax(-1) if order == "norm first" else normalise(maps.softmax(-1))
        return attn.proj((maps @ v).transpose(1, 2).reshape(2, 64, 32))

    with torch.no_grad():
        ours = attn(x, 8, 8)
        right, norm_first, transposed = (reference(o) for o in ("right", "norm first", "transposed"))
    assert (ours - right).abs().max() < 1e-4  # outputs of size ~5
    assert (ours - norm_first).abs().max() > 1e-2 and (ours - transposed).abs().max() > 1e-2
    assert not hasattr(model.stage1[0].attn, "transform_conv")  # one head: nothing to mix


def test_ceit_feed_forward_keeps_the_class_token_and_only_the_last_class_token_queries():
    """CeiT's LeFF runs the patch tokens as a map (row-major: token r * side + c at row r, column c) and passes the
    class token through; the layer-wise class attention adds its attention to the last class token alone, whose
    query is the only one. Written out: a transposed map, or the first class token querying, breaks it."""
    model = _tiny(ceit.CeiT, img_size=64, embed_dim=48, depth=3, num_heads=4)
    leff, x = model.blocks[0].leff, torch.randn(2, 17, 48)

    def feed_forward(transposed: bool) -> torch.Tensor:
        grid = x[:, 1:].reshape(2, 4, 4, 48).permute(0, 3, 2, 1) if transposed else \
            x[:, 1:].reshape(2, 4, 4, 48).permute(0, 3, 1, 2)
        y = leff.bn3(leff.conv3(leff.act(leff.bn2(leff.conv2(leff.act(leff.bn1(leff.conv1(grid))))))))
        y = y.permute(0, 1, 3, 2) if transposed else y
        return torch.cat((x[:, :1], y.flatten(2).transpose(1, 2)), dim=1)

    lca, tokens = model.lca, torch.randn(2, 3, 48)
    with torch.no_grad():  # attention far from uniform
        for p in lca.attn.parameters():
            p.add_(torch.randn_like(p) * 0.3)

    def class_attention(query: int) -> torch.Tensor:
        normed = lca.norm1(tokens)
        q, k, v = lca.attn.qkv(normed).reshape(2, 3, 3, 4, 12).permute(2, 0, 3, 1, 4)
        maps = (q[:, :, [query]] @ k.transpose(-2, -1) * 12 ** -0.5).softmax(-1)
        out = tokens[:, -1:] + lca.attn.proj((maps @ v).transpose(1, 2).reshape(2, 1, 48))
        return out + lca.feedforward(lca.norm2(out))

    with torch.no_grad():
        assert torch.equal(leff(x)[:, 0], x[:, 0])
        assert (leff(x) - feed_forward(False)).abs().max() < 1e-5
        assert (leff(x) - feed_forward(True)).abs().max() > 1e-3
        assert (lca(tokens) - class_attention(-1)).abs().max() < 1e-4
        assert (lca(tokens) - class_attention(0)).abs().max() > 1e-2


def test_rest_deploy_map_norm_is_the_instance_norm_in_two_stages(tmp_path):
    """The deploy rewrite's two-stage means give InstanceNorm2d's result (float64: to rounding), and in onnxruntime
    they keep sharp maps within 1e-5 of the float64 result, where ONNX's InstanceNormalization is 20 times further
    off (docs/models.md)."""
    import onnxruntime

    from vitserve.export.onnx import export_onnx
    from vitserve.models.rewrites import deploy_copy
    from vitserve.models.rewrites import rest as rest_rewrite

    torch.manual_seed(0)
    maps = (torch.randn(3, 2, 784, 49, dtype=torch.float64) * 5).softmax(-1)
    norm = torch.nn.InstanceNorm2d(2)
    assert (rest_rewrite.TwoStageMapNorm(1e-5)(maps) - norm(maps)).abs().max() < 1e-12

    path = tmp_path / "norm.onnx"
    export_onnx(rest_rewrite.TwoStageMapNorm(1e-5), (2, 784, 49), path, max_batch=4, opset=18)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ours = session.run(None, {"pixel_values": maps.float().numpy()})[0]
    assert abs(ours - norm(maps).numpy()).max() < 1e-5

    model = _tiny(rest.ResT, embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1))
    deploy, name = deploy_copy(model)
    assert name == rest_rewrite.REWRITE_NAME
    assert sum(isinstance(m, rest_rewrite.TwoStageMapNorm) for m in deploy.modules()) == 3  # the stages with heads
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (deploy(x) - model(x)).abs().max() < 1e-5


@pytest.mark.parametrize("branch", [0, 1])
def test_cswin_token_attends_within_its_stripe(branch):
    """A token's output in the vertical-stripe branch (0: all rows, 2 columns) changes when a value in its own stripe
    changes and not when one outside it does; the horizontal branch (1) likewise with rows. A stripe laid out the
    wrong way round, or shifted by a column, breaks this. to_stripes and from_stripes undo each other."""
    torch.manual_seed(0)
    block = cswin.CSWinBlock(16, side=8, num_heads=4, split=2, mlp_ratio=4.0, last_stage=False).eval()
    attn = block.attns[branch]
    q, k, v = (torch.randn(1, 64, 8) for _ in range(3))
    assert torch.equal(cswin.from_stripes(cswin.to_stripes(q, 8, attn.rows, attn.cols), 8, attn.rows, attn.cols), q)
    token = 3 * 8 + 5  # row 3, column 5: stripe columns 4-5 (branch 0), stripe rows 2-3 (branch 1)
    inside = [r * 8 + c for r in range(8) for c in range(8) if (c // 2 == 2 if branch == 0 else r // 2 == 1)]
    with torch.no_grad():
        base = attn(q, k, v)[0, token]
        for other in range(64):
            changed = v.clone()
            changed[0, other] += 1.0
            moved = (attn(q, k, changed)[0, token] - base).abs().max() > 1e-6
            assert moved == (other in inside), (other, moved)


@pytest.mark.parametrize("shuffled", [False, True])
def test_shuffle_windows_gather_what_they_should(shuffled):
    """On a 14x14 map with 7x7 windows, a regular window is a 7x7 block of adjacent tokens; a shuffled one gathers
    every second row and column (rows and columns of one parity, as H / 7 = 2). A token's output moves when a token
    of its window changes and only then; the relative position index is Swin's."""
    torch.manual_seed(0)
    attn = shuffle.WindowAttention(8, num_heads=2, window=7, shuffle=shuffled).eval()
    x = torch.randn(1, 8, 14, 14)
    row, col = 3, 5
    same = (lambda r, c: r % 2 == row % 2 and c % 2 == col % 2) if shuffled else \
        (lambda r, c: r // 7 == row // 7 and c // 7 == col // 7)
    with torch.no_grad():
        base = attn(x)[0, :, row, col]
        for r in range(14):
            for c in range(14):
                if (r, c) == (row, col):
                    continue
                changed = x.clone()
                changed[0, :, r, c] += 1.0
                moved = (attn(changed)[0, :, row, col] - base).abs().max() > 1e-6
                assert moved == same(r, c), (r, c, moved)
    index = shuffle.relative_position_index(7)
    assert index.shape == (49, 49) and index[0, 0] == 6 * 13 + 6 and index[0, 48] == 0 and index[48, 0] == 168


def test_localvit_locality_feed_forward_written_out():
    """LocalViT's block without its attention, written out: the patch tokens as a row-major map, x + BN(W2 SE(hswish(
    BN(dw3x3(hswish(BN(W1 x))))))), where SE scales each channel by hsigmoid(fc2 relu(fc1 mean)), hswish(t) =
    t relu6(t + 3) / 6; the class token untouched. The map transposed, or the gate squeezing by the maximum instead of
    the mean, breaks it."""
    model = _tiny(localvit.LocalViT, img_size=64, embed_dim=48, depth=2, num_heads=4, reduction=12)
    block, x = model.blocks[0], torch.randn(2, 17, 48)
    block.attn.forward = lambda t: torch.zeros_like(t)  # the feed-forward alone
    conv = block.conv.conv
    with torch.no_grad():  # a gate that varies with what it squeezes
        conv[6].fc[0].weight.mul_(20)

    def bn(t, norm):
        shape = (1, -1, 1, 1)
        return ((t - norm.running_mean.view(shape)) / torch.sqrt(norm.running_var.view(shape) + norm.eps)
                * norm.weight.view(shape) + norm.bias.view(shape))

    def hswish(t):
        return t * torch.clamp(t + 3, 0, 6) / 6

    def reference(transposed: bool = False, gate_from_max: bool = False) -> torch.Tensor:
        grid = x[:, 1:].reshape(2, 4, 4, 48).permute(0, 3, 1, 2)
        grid = grid.transpose(2, 3) if transposed else grid
        y = hswish(bn(torch.einsum("oc,bchw->bohw", conv[0].weight[:, :, 0, 0], grid), conv[1]))
        y = hswish(bn(torch.nn.functional.conv2d(y, conv[3].weight, padding=1, groups=192), conv[4]))
        se = conv[6].fc
        squeezed = y.amax(dim=(2, 3)) if gate_from_max else y.mean(dim=(2, 3))
        hidden = torch.relu(squeezed @ se[0].weight.t() + se[0].bias)
        y = y * (torch.clamp(hidden @ se[2].weight.t() + se[2].bias + 3, 0, 6) / 6)[:, :, None, None]
        y = grid + bn(torch.einsum("oc,bchw->bohw", conv[7].weight[:, :, 0, 0], y), conv[8])
        y = y.transpose(2, 3) if transposed else y
        return torch.cat((x[:, :1], y.flatten(2).transpose(1, 2)), dim=1)

    with torch.no_grad():
        ours = block(x)
        assert torch.equal(ours[:, 0], x[:, 0])
        assert (ours - reference()).abs().max() < 1e-5
        assert (ours - reference(transposed=True)).abs().max() > 1e-3
        assert (ours - reference(gate_from_max=True)).abs().max() > 1e-3
    assert conv[6].fc[0].out_features == 192 // 12  # hidden 4 x 48, reduced by `reduction`
