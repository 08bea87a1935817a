"""Vision GNN: graph layers against literal references, tiny models at any input size, the official
checkpoint layout (manifests), and parameter / MAC counts against the paper."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import efficient_backbones as eb
from efficient_backbones import vig
from efficient_backbones.layers import graph
from efficient_backbones.layers.graph import (
    MaxRelativeGraphConv,
    knn_graph,
    max_relative_features,
    relative_position_bias,
)

MANIFESTS = Path(vig.__file__).parent / "manifests"
VARIANTS = [*vig.VIG_CFGS, *vig.PVIG_CFGS]

# REFERENCE.md, Vision backbones table (M params, G MACs at 224).
PAPER_PARAMS = {
    "vig_ti_224": 7.18,
    "vig_s_224": 22.75,
    "vig_b_224": 86.84,
    "pvig_ti_224": 10.7,
    "pvig_s_224": 27.3,
    "pvig_m_224": 51.7,
    "pvig_b_224": 92.6,
}
PAPER_MACS = {
    "vig_ti_224": 1.30,
    "vig_s_224": 4.52,
    "vig_b_224": 17.64,
    "pvig_ti_224": 1.70,
    "pvig_s_224": 4.55,
    "pvig_m_224": 8.85,
    "pvig_b_224": 16.80,
}

TINY_ISO = {"embed_dim": 32, "depth": 5}
TINY_PYR = {"embed_dims": (16, 24, 32, 48), "depths": (1, 1, 2, 1)}


def _tiny(name: str, **kwargs) -> torch.nn.Module:
    arch = TINY_ISO if name.startswith("vig") else TINY_PYR
    return eb.create_model(name, num_classes=7, **arch, **kwargs)


def _manifest(name: str) -> dict[str, list[int]]:
    return json.loads((MANIFESTS / f"{name}.json").read_text())


def _calibrate(model: torch.nn.Module, size: int = 64) -> torch.nn.Module:
    """Give BatchNorm real statistics so eval-mode activations stay O(1) through a random network."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, size, size))
    return model.eval()


# --- graph layers -------------------------------------------------------------------------------


def _reference_knn(x, y, k, dilation, relative_pos=None):
    """The official recipe literally: full squared distances of normalised features, sorted."""
    x = F.normalize(x, dim=1).transpose(1, 2)
    y = x if y is None else F.normalize(y, dim=1).transpose(1, 2)
    dist = torch.cdist(x.double(), y.double()) ** 2
    if relative_pos is not None:
        dist = dist + relative_pos.double()
    return dist.argsort(dim=-1)[..., : k * dilation : dilation]


@pytest.mark.parametrize("dilation", [1, 3])
@pytest.mark.parametrize("with_keys", [False, True])
@pytest.mark.parametrize("with_relative_pos", [False, True])
def test_knn_graph_matches_sorted_distances(dilation, with_keys, with_relative_pos):
    torch.manual_seed(0)
    x = torch.randn(2, 16, 60)
    y = torch.randn(2, 16, 40) if with_keys else None
    rel = torch.rand(1, 60, 40 if with_keys else 60) if with_relative_pos else None
    idx = knn_graph(x, y, k=5, dilation=dilation, relative_pos=rel)
    assert idx.shape == (2, 60, 5)
    assert idx.dtype == torch.int64
    assert torch.equal(idx, _reference_knn(x, y, 5, dilation, rel))
    if not with_keys and not with_relative_pos:
        assert torch.equal(idx[..., 0], torch.arange(60).expand(2, 60))  # each node is its own nearest


def test_knn_graph_chunked_rows_agree(monkeypatch):
    torch.manual_seed(1)
    x, rel = torch.randn(3, 8, 50), torch.rand(50, 50)
    whole = knn_graph(x, k=4, dilation=2, relative_pos=rel)
    monkeypatch.setattr(graph, "_KNN_CHUNK_ELEMENTS", 3 * 50 * 7)  # 7 rows per chunk
    assert torch.equal(knn_graph(x, k=4, dilation=2, relative_pos=rel), whole)


def test_knn_graph_clamps_to_available_keys():
    x = torch.randn(1, 4, 6)
    assert knn_graph(x, k=9, dilation=3).shape == (1, 6, 6)
    assert knn_graph(x, k=2, dilation=5).shape == (1, 6, 2)  # dilation cut to 6 // 2 = 3


def test_knn_graph_builds_no_autograd_graph():
    x = torch.randn(1, 4, 10, requires_grad=True)
    assert not knn_graph(x, k=3).requires_grad


def test_max_relative_features_is_max_of_differences():
    torch.manual_seed(2)
    x, y = torch.randn(2, 6, 12), torch.randn(2, 6, 5)
    idx = torch.randint(0, 5, (2, 12, 3))
    neighbours = torch.stack([y[b][:, idx[b]] for b in range(2)])  # (B, C, N, k)
    expected = (neighbours - x.unsqueeze(-1)).amax(dim=-1)
    assert torch.equal(max_relative_features(x, y, idx), expected)


def _sincos_2d(channels: int, h: int, w: int) -> torch.Tensor:
    """MAE's 2-D sine-cosine embedding written out: half the channels for each axis."""
    quarter = channels // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    gw, gh = torch.meshgrid(
        torch.arange(w, dtype=torch.float64), torch.arange(h, dtype=torch.float64), indexing="xy"
    )

    def axis(pos):
        out = pos.reshape(-1, 1) * omega
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([axis(gw), axis(gh)], dim=1)


@pytest.mark.parametrize(("grid", "ratio"), [((8, 8), 1), ((8, 8), 2), ((12, 8), 4), ((3, 3), 4)])
def test_relative_position_bias_is_the_sincos_product(grid, ratio):
    channels = 16
    emb = _sincos_2d(channels, *grid)
    table = (2 * emb @ emb.T / channels).float()
    keys = graph.num_keys(grid, ratio)
    if keys != table.shape[1]:
        table = F.interpolate(
            table[None, None], size=(table.shape[0], keys), mode="bicubic", align_corners=False
        )[0, 0]
    got = relative_position_bias(channels, grid, ratio)
    assert got.shape == (1, grid[0] * grid[1], keys)
    torch.testing.assert_close(got[0], -table, atol=1e-6, rtol=0)


def test_graph_conv_matches_literal_official_recipe():
    """Dense distances -> topk -> dilation -> max(x_j - x_i) -> channel-interleaved cat -> grouped conv."""
    torch.manual_seed(3)
    conv = MaxRelativeGraphConv(8, 16, k=3, dilation=2, reduce_ratio=2).eval()
    torch.nn.init.normal_(conv.norm.running_mean)
    x = torch.randn(2, 8, 6, 6)
    rel = relative_position_bias(8, (6, 6), 2)

    y = F.avg_pool2d(x, 2, 2).flatten(2)
    xs = x.flatten(2)
    xn, yn = F.normalize(xs, dim=1).transpose(1, 2), F.normalize(y, dim=1).transpose(1, 2)
    dist = (
        (xn * xn).sum(-1, keepdim=True) - 2 * xn @ yn.transpose(1, 2) + (yn * yn).sum(-1).unsqueeze(1) + rel
    )
    idx = torch.topk(-dist, k=6).indices[..., ::2]
    x_j = torch.stack([y[b][:, idx[b]] for b in range(2)])  # (B, C, N, k)
    rel_feat = (x_j - xs.unsqueeze(-1)).max(dim=-1).values
    stacked = torch.cat([xs.unsqueeze(2), rel_feat.unsqueeze(2)], dim=2).reshape(2, 16, 36, 1)
    expected = conv.act(conv.norm(conv.conv(stacked))).reshape(2, 16, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(conv(x, rel), expected)


# --- models -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vig_ti_224", "pvig_ti_224"])
@pytest.mark.parametrize("size", [(64, 64), (96, 128), (50, 70), (32, 32)])
def test_tiny_models_run_at_any_input_size(name, size):
    model = _calibrate(_tiny(name))
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        logits = model(x)
        tokens, grid = model.patch_tokens(x)
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    stride = 16 if name.startswith("vig") else 32
    expected_grid = tuple(math.ceil(s / stride) for s in size)
    assert grid == expected_grid
    assert tokens.shape == (2, grid[0] * grid[1], model.num_features)
    assert pre.shape == (2, model.head_hidden_size)


def test_patch_tokens_at_224_follow_the_published_grids():
    iso, pyr = _tiny("vig_ti_224").eval(), _tiny("pvig_ti_224").eval()
    with torch.no_grad():
        assert iso.patch_tokens(torch.randn(1, 3, 224, 224))[1] == (14, 14)
        assert pyr.patch_tokens(torch.randn(1, 3, 224, 224))[1] == (7, 7)


def test_position_embedding_is_resized_not_cropped():
    model = _tiny("vig_ti_224", img_size=128).eval()  # stores an 8x8 embedding
    assert model.pos_embed.shape[-2:] == (8, 8)
    with torch.no_grad():
        model.pos_embed.copy_(torch.linspace(0, 1, 8).view(1, 1, 1, 8).expand_as(model.pos_embed))
        stem = model.stem(torch.randn(1, 3, 256, 256))
        pos = model._add_pos_embed(torch.zeros_like(stem))
    assert pos.shape[-2:] == (16, 16)
    assert pos[0, 0, 0, 0] < 0.05  # still spans the whole ramp
    assert pos[0, 0, 0, -1] > 0.95


def test_relative_position_tables_follow_each_stage_grid():
    model = _tiny("pvig_ti_224").eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 96, 64))
    shapes = [next(iter(s._relative_pos_cache.values())).shape for s in model.stages]
    assert shapes == [(1, 24 * 16, 6 * 4), (1, 12 * 8, 6 * 4), (1, 6 * 4, 6 * 4), (1, 3 * 2, 3 * 2)]


def test_features_only_gives_pyramid_maps():
    model = _tiny("pvig_ti_224", features_only=True).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == list(TINY_PYR["embed_dims"])
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]
    assert model.feature_info.reduction() == [4, 8, 16, 32]


def test_features_only_isotropic_gives_last_blocks():
    model = _tiny("vig_ti_224", features_only=True).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape for f in feats] == [(1, 32, 4, 4)] * 3


def test_classifier_reset_and_timm_registry():
    model = _tiny("pvig_ti_224")
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3
    model.reset_classifier(0)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1024)
    assert isinstance(timm.create_model("vig_ti_224", **TINY_ISO), vig.VisionGNN)


@pytest.mark.parametrize("name", ["vig_ti_224", "pvig_ti_224"])
def test_training_step_and_grad_checkpointing(name):
    torch.manual_seed(4)
    model = _tiny(name, drop_path_rate=0.1)
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        plain = model(x)
        model.set_grad_checkpointing(True)
        torch.testing.assert_close(model(x), plain)


def test_own_checkpoint_round_trips_through_the_filter(tmp_path):
    from safetensors.torch import save_file

    model = _calibrate(_tiny("pvig_ti_224"))
    path = tmp_path / "pvig.safetensors"
    save_file(model.state_dict(), str(path))
    again = eb.create_model("pvig_ti_224", num_classes=7, checkpoint_path=path, **TINY_PYR).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


# --- official layout ----------------------------------------------------------------------------


def _official_like(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our weights renamed to the official layout (the inverse of checkpoint_filter_fn)."""
    prefixes = {v: k for k, v in vig._official_backbone_prefixes(model).items()}
    out = {}
    for key, value in model.state_dict().items():
        for prefix, i in prefixes.items():
            if key.startswith(prefix):
                rest = key[len(prefix) :]
                if "downsample" in prefix:
                    rest = "conv." + rest
                rest = rest.replace("grapher.graph_conv.conv.", "0.graph_conv.gconv.nn.0.")
                rest = rest.replace("grapher.graph_conv.norm.", "0.graph_conv.gconv.nn.1.")
                rest = rest.replace("grapher.", "0.").replace("ffn.", "1.")
                key = f"backbone.{i}.{rest}"
                break
        for ours, theirs in (
            ("head.conv.", "prediction.0."),
            ("head.norm.", "prediction.1."),
            ("head.fc.", "prediction.4."),
        ):
            if key.startswith(ours):
                key = theirs + key[len(ours) :]
                value = value[..., None, None] if key == "prediction.4.weight" else value
        out[key] = value
    return out


@pytest.mark.parametrize("name", ["vig_ti_224", "pvig_ti_224"])
def test_official_layout_reproduces_outputs(name):
    model = _calibrate(_tiny(name))
    official = _official_like(model)
    assert "backbone.0.0.fc1.0.weight" in official
    assert official["prediction.4.weight"].ndim == 4
    fresh = _tiny(name).eval()
    fresh.load_state_dict(vig.checkpoint_filter_fn(official, fresh), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def _on_meta(name: str, **kwargs) -> torch.nn.Module:
    """A full-size model without memory or init cost: shapes and names are all these tests need."""
    with torch.device("meta"):
        return eb.create_model(name, **kwargs)


@pytest.mark.parametrize("name", VARIANTS)
def test_official_manifest_loads_strictly(name):
    manifest = _manifest(name)
    state = {k: torch.empty(shape, device="meta") for k, shape in manifest.items()}
    model = _on_meta(name)
    filtered = vig.checkpoint_filter_fn(state, model)
    result = model.load_state_dict(filtered, strict=True, assign=True)
    assert not result.missing_keys
    assert not result.unexpected_keys
    # Everything but the fixed relative position tables is carried over.
    assert len(filtered) == sum(not k.endswith("relative_pos") for k in manifest)


def test_official_manifest_loads_into_another_input_size():
    state = {k: torch.randn(shape) for k, shape in _manifest("pvig_ti_224").items()}
    model = eb.create_model("pvig_ti_224", img_size=160)
    model.load_state_dict(vig.checkpoint_filter_fn(state, model), strict=True)
    assert model.pos_embed.shape[-2:] == (40, 40)


# --- published figures --------------------------------------------------------------------------


def _trainable_in_manifest(name: str) -> int:
    """Parameters of the built official model that are trained (no BN buffers, no relative_pos)."""
    skip = ("running_mean", "running_var", "num_batches_tracked", "relative_pos")
    return sum(math.prod(s) for k, s in _manifest(name).items() if not k.endswith(skip))


@pytest.mark.parametrize("name", VARIANTS)
def test_parameter_counts(name):
    model = _on_meta(name)
    params = sum(p.numel() for p in model.parameters())
    assert params == _trainable_in_manifest(name)
    if name == "pvig_m_224":
        # The paper's 51.7 M for Pyramid ViG-M counts the official model's fixed relative position
        # tables too (49.53 M trained + 2.16 M tables = 51.68 M); its Ti / S / B figures do not.
        tables = sum(math.prod(s) for k, s in _manifest(name).items() if k.endswith("relative_pos"))
        params += tables
    assert abs(params / 1e6 - PAPER_PARAMS[name]) / PAPER_PARAMS[name] < 0.01


def _macs(model: torch.nn.Module, size: int = 224) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.randn(1, 3, size, size))
    return counter.get_total_flops() / 2e9


@pytest.mark.parametrize(
    "name",
    [
        "vig_ti_224",
        "pvig_ti_224",
        *(pytest.param(n, marks=pytest.mark.slow) for n in VARIANTS if "_ti_" not in n),
    ],
)
def test_macs_match_the_paper(name):
    macs = _macs(eb.create_model(name))
    assert abs(macs - PAPER_MACS[name]) / PAPER_MACS[name] < 0.03, macs


def test_pretrained_loads_an_official_layout_file(tmp_path):
    """``pretrained=True`` with a local official-layout ``.pth`` (wrapped as the release is) loads strictly."""
    source = _calibrate(eb.create_model("pvig_ti_224", **TINY_PYR))
    path = tmp_path / "pvig_ti_224.pth"
    torch.save({"epoch": 1, "state_dict": _official_like(source)}, path)
    model = eb.create_model(
        "pvig_ti_224", pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **TINY_PYR
    )
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), source(x), rtol=0, atol=0)


def test_pretrained_without_weights_fails_clearly():
    with pytest.raises(RuntimeError, match="no weights are known"):
        eb.create_model("vig_ti_224", pretrained=True, **TINY_ISO)
