"""GhostNet family checks: timm parity, DFC attention, DynamicConv, G-Ghost stages, official layouts.

The zoo-wide checks (params / MACs against REFERENCE.md, the timm interface) are in
``test_backbones_zoo.py``; these are the family-specific ones:

- ``ghostnet_*`` / ``ghostnetv2_*``: the same state-dict keys and shapes as timm's, and identical
  logits after loading timm's randomly initialised (and perturbed) weights.
- DFC attention: shapes, and the broadcast gate equals nearest upsampling exactly.
- DynamicConv: one-hot routing is a plain convolution with that expert; general routing is the
  per-sample routed kernel sum, computed naively here; samples do not mix through the folded batch.
- G-Ghost: the stage structure of the official code (which stages are ghost stages, the raw /
  cheap split, the mix input width) and a stage equal to a naive implementation of its forward.
- Official layouts: ``efficient_backbones/manifests/<variant>.json`` (key -> shape of the official
  model, built locally from huawei-noah/Efficient-AI-Backbones) load through the family's
  ``checkpoint_filter_fn`` with no missing or unexpected key, also wrapped as a training checkpoint.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import efficient_backbones as eb
from efficient_backbones import g_ghost
from efficient_backbones._registry import family_module
from efficient_backbones.layers.dynamic_conv import DynamicConv, convert_to_dynamic_conv
from efficient_backbones.layers.ghost import DFCAttention, GhostModule, apply_gate_upsampled

MANIFEST_DIR = Path(eb.__file__).parent / "manifests"
TIMM_TWINS = [
    "ghostnet_050",
    "ghostnet_100",
    "ghostnet_130",
    "ghostnetv2_100",
    "ghostnetv2_130",
    "ghostnetv2_160",
]
OFFICIAL_MANIFESTS = [
    "ghostnetv2_100",
    "parameternet_600m",
    "g_ghost_regnetx_032",
    "g_ghost_regnetx_040",
    "g_ghost_regnetx_080",
    "g_ghost_regnetx_160",
]


def _perturb_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm affine parameters and statistics (the rest is randomly initialised already),
    so that every parameter and buffer changes the output; returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0.0, 0.1, generator=gen)
                m.running_mean.normal_(0.0, 0.1, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
    return model.eval()


def _manifest(name: str) -> dict[str, list[int]]:
    return json.loads((MANIFEST_DIR / f"{name}.json").read_text())


# ---------------------------------------------------------------------------------------------
# timm parity


@pytest.mark.parametrize("name", TIMM_TWINS)
def test_same_state_dict_and_logits_as_timm(name: str) -> None:
    theirs = _perturb_(timm.create_model(name))
    ours = eb.create_model(name).eval()
    their_sd, our_sd = theirs.state_dict(), ours.state_dict()
    assert list(our_sd) == list(their_sd)
    assert {k: tuple(v.shape) for k, v in our_sd.items()} == {k: tuple(v.shape) for k, v in their_sd.items()}
    ours.load_state_dict(their_sd, strict=True)
    # 80 px: even maps use the broadcast DFC gate, the 5x5 stage the nearest-upsampling path.
    x = torch.randn(2, 3, 80, 80, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        # Eval mode folds BatchNorm into the convolutions: equal to float rounding.
        ref, out = theirs(x), ours(x)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    # Train mode runs the same operations as timm: equal bit for bit (same dropout mask).
    theirs.train()
    ours.train()
    with torch.no_grad():
        torch.manual_seed(2)
        ref = theirs(x)
        torch.manual_seed(2)
        assert torch.equal(ours(x), ref)


def test_ghostnetv2_places_dfc_attention_from_the_third_block() -> None:
    model = eb.create_model("ghostnetv2_100")
    blocks = [b for stage in model.blocks[:-1] for b in stage]
    has_dfc = [b.ghost1.short_conv is not None for b in blocks]
    assert has_dfc == [False, False] + [True] * (len(blocks) - 2)
    assert all(b.ghost2.short_conv is None for b in blocks)  # the projection module stays plain


# ---------------------------------------------------------------------------------------------
# DFC attention


@pytest.mark.parametrize("size", [(16, 16), (15, 9), (7, 7), (1, 5)])
def test_dfc_attention_shapes_and_gate(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    module = GhostModule(8, 12, use_dfc=True).eval()
    x = torch.randn(2, 8, *size)
    gate = module.short_conv(x)
    if min(size) >= 2:  # the official 2x2 average pool
        assert gate.shape == (2, 12, size[0] // 2, size[1] // 2)
    else:  # a map under 2 pixels pools its partial window (the official code fails there)
        assert gate.shape == (2, 12, (size[0] + 1) // 2, (size[1] + 1) // 2)
    assert bool(((gate > 0) & (gate < 1)).all())
    # Naive reference: unfolded layers, the pooled map through the six DFC layers, sigmoid, nearest
    # upsampling to the ghost module's output, elementwise gate.
    pooled = F.avg_pool2d(x, 2, 2, ceil_mode=min(size) < 2)
    naive_gate = torch.sigmoid(nn.Sequential.forward(module.short_conv, pooled))
    torch.testing.assert_close(gate, naive_gate, rtol=1e-5, atol=1e-6)
    x1 = module.primary_conv(x)
    plain = torch.cat([x1, module.cheap_operation(x1)], 1)[:, :12]
    expected = plain * F.interpolate(naive_gate, size=size, mode="nearest")
    torch.testing.assert_close(module(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_broadcast_gate_equals_nearest_upsampling(memory_format: torch.memory_format) -> None:
    out = torch.randn(3, 5, 12, 10).contiguous(memory_format=memory_format)
    gate = torch.rand(3, 5, 6, 5).contiguous(memory_format=memory_format)
    expected = out * F.interpolate(gate, size=(12, 10), mode="nearest")
    assert torch.equal(apply_gate_upsampled(out.clone(), gate), expected)
    trimmed = out[:, :4]  # neither layout: the interpolation path
    assert torch.equal(apply_gate_upsampled(trimmed.clone(), gate[:, :4]), expected[:, :4])


@pytest.mark.parametrize("name", ["ghostnetv2_100", "g_ghost_regnetx_032"])
def test_channels_last_inference_gives_the_same_features(name: str) -> None:
    model = _perturb_(eb.create_model(name))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        fast = model.forward_features(x)
        model.eval_channels_last = False
        plain = model.forward_features(x)
    assert fast.is_contiguous()
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5 * plain.abs().max().item())


def test_dfc_attention_is_decoupled_horizontal_then_vertical() -> None:
    attn = DFCAttention(4, 6, dfc_kernel=5)
    assert attn[2].kernel_size == (1, 5)
    assert attn[2].groups == 6
    assert attn[4].kernel_size == (5, 1)
    assert attn[4].groups == 6


def test_ghost_module_channels_and_odd_outputs() -> None:
    module = GhostModule(6, 7, ratio=3)  # ceil(7/3)=3 intrinsic maps, 6 ghosts, 2 dropped
    assert module.primary_conv[0].out_channels == 3
    assert module.cheap_operation[0].out_channels == 6
    assert module(torch.randn(1, 6, 5, 5)).shape == (1, 7, 5, 5)


# ---------------------------------------------------------------------------------------------
# DynamicConv

GEOMETRIES = [
    dict(in_chs=6, out_chs=4, kernel_size=3, stride=1, groups=1, bias=False, dilation=1),
    dict(in_chs=6, out_chs=8, kernel_size=3, stride=2, groups=2, bias=True, dilation=1),
    dict(in_chs=8, out_chs=8, kernel_size=5, stride=1, groups=8, bias=False, dilation=2),
    dict(in_chs=5, out_chs=7, kernel_size=1, stride=1, groups=1, bias=True, dilation=1),
]


@pytest.mark.parametrize("geom", GEOMETRIES)
def test_dynamic_conv_one_hot_routing_is_that_experts_conv(geom: dict) -> None:
    torch.manual_seed(0)
    layer = DynamicConv(**geom, num_experts=4)
    conv = layer.cond_conv
    x = torch.randn(3, geom["in_chs"], 11, 11)
    for e in range(4):
        routing = F.one_hot(torch.full((3,), e), 4).float()
        weight, bias = conv.expert(e)
        expected = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        torch.testing.assert_close(layer(x, routing), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("geom", GEOMETRIES)
def test_dynamic_conv_is_the_per_sample_routed_kernel_sum(geom: dict) -> None:
    torch.manual_seed(0)
    layer = DynamicConv(**geom, num_experts=4)
    conv = layer.cond_conv
    x = torch.randn(3, geom["in_chs"], 10, 9)
    routing = torch.sigmoid(layer.routing(F.adaptive_avg_pool2d(x, 1).flatten(1)))  # official routing
    torch.testing.assert_close(layer.route(x), routing)
    rows = []
    for b in range(3):  # naive: build sample b's kernel as sum_e r_be W_e, run it on sample b alone
        kernel = sum(routing[b, e] * conv.expert(e)[0] for e in range(4))
        bias = sum(routing[b, e] * conv.expert(e)[1] for e in range(4)) if geom["bias"] else None
        rows.append(
            F.conv2d(x[b : b + 1], kernel, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        )
    torch.testing.assert_close(layer(x), torch.cat(rows), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer(x[1:2]), rows[1], rtol=1e-5, atol=1e-5)  # the batch-1 path


def test_dynamic_conv_layout_params_and_gradients() -> None:
    layer = DynamicConv(8, 16, 3, groups=2, bias=True, num_experts=4)
    sd = layer.state_dict()
    # timm CondConv2d / official ParameterNet layout: experts flattened per row.
    assert sd["cond_conv.weight"].shape == (4, 16 * 4 * 3 * 3)
    assert sd["cond_conv.bias"].shape == (4, 16)
    assert sd["routing.weight"].shape == (4, 8)
    static = nn.Conv2d(8, 16, 3, groups=2, bias=True)
    n_static = sum(p.numel() for p in static.parameters())
    assert sum(p.numel() for p in layer.parameters()) == 4 * n_static + 8 * 4 + 4
    layer(torch.randn(2, 8, 6, 6)).square().mean().backward()
    assert layer.routing.weight.grad.abs().sum() > 0
    assert layer.cond_conv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="routing_weights"):
        layer(torch.randn(2, 8, 6, 6), torch.ones(3, 4))


def test_convert_any_model_to_dynamic_conv() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.Conv2d(8, 4, 1)
    )
    convert_to_dynamic_conv(model, num_experts=3, filter_fn=lambda name, conv: conv.groups == 1)
    assert isinstance(model[0], DynamicConv)
    assert isinstance(model[3], DynamicConv)
    assert type(model[2]) is nn.Conv2d  # the depthwise conv was filtered out
    assert model[0].cond_conv.stride == (2, 2)
    assert model[0].cond_conv.padding == (1, 1)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 4, 8, 8)


def test_parameternet_dynamic_conv_placement_and_sample_independence() -> None:
    model = _perturb_(eb.create_model("parameternet_600m", num_classes=10))
    block = model.blocks[1][0]  # a strided block with a projection shortcut
    assert isinstance(model.conv_stem, DynamicConv)
    assert isinstance(block.ghost1.primary_conv[0], DynamicConv)
    assert isinstance(block.ghost2.cheap_operation[0], DynamicConv)
    assert isinstance(block.shortcut[0], DynamicConv)
    assert isinstance(block.shortcut[2], DynamicConv)
    assert isinstance(model.blocks[-1][0].conv, DynamicConv)
    assert type(block.conv_dw) is nn.Conv2d
    assert type(model.conv_head) is nn.Conv2d
    assert all(type(m.conv_reduce) is nn.Conv2d for m in model.modules() if hasattr(m, "conv_reduce"))
    assert isinstance(model.act1, nn.Hardswish)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        batched = model(x)
        single = torch.cat([model(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# G-Ghost


@pytest.mark.parametrize("name", sorted(g_ghost.model_cfgs))
def test_g_ghost_stage_structure(name: str) -> None:
    cfg = g_ghost.model_cfgs[name]
    model = eb.create_model(name)
    prev = 32
    for idx, (stage, depth, width) in enumerate(zip(model.stages, cfg["depths"], cfg["widths"])):
        if idx > 0 and depth > 2:  # the official rule: layer2..4 with more than two blocks
            assert isinstance(stage, g_ghost.GGhostStage)
            raw, cheap, middle_gw = g_ghost.ghost_split(width, cfg["group_width"])
            assert (stage.raw_planes, stage.cheap_planes) == (raw, cheap)
            assert raw % middle_gw == 0
            assert raw <= width // 2 < raw + middle_gw
            assert len(stage.layers) == depth - 2
            assert stage.merge[1].in_channels == width + raw * (depth - 2)
            assert stage.base.conv1.in_channels == prev
            assert stage.base.conv2.stride == (2, 2)
            assert stage.end.conv1.in_channels == width
            for block in stage.layers:
                assert block.conv2.groups == raw // min(raw, middle_gw)
        else:
            assert isinstance(stage, nn.Sequential)
            assert len(stage) == depth
        prev = width
    assert model.fc.in_features == cfg["widths"][-1]


def test_g_ghost_stage_equals_naive_forward() -> None:
    torch.manual_seed(0)
    stage = g_ghost.GGhostStage(16, 32, depth=4, group_width=8, stride=2)
    _perturb_(stage)
    x = torch.randn(2, 16, 12, 12)
    with torch.inference_mode():
        x0 = stage.base(x)
        feats, e = [x0], x0[:, : stage.raw_planes]
        for block in stage.layers:
            e = block(e)
            feats.append(e)
        pooled = F.adaptive_avg_pool2d(torch.cat(feats, 1), 1)  # official: concat at full size, then pool
        mix = stage.merge[1:](pooled)
        cheap = F.relu(stage.cheap(x0[:, stage.raw_planes :]) + mix)
        expected = stage.end(torch.cat([e, cheap], 1))
        torch.testing.assert_close(stage(x), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Official layouts through checkpoint_filter_fn


@pytest.mark.parametrize("name", OFFICIAL_MANIFESTS)
def test_official_manifest_loads_through_filter(name: str) -> None:
    manifest = _manifest(name)
    model = eb.create_model(name)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: tuple(v) for k, v in manifest.items()}
    n_params = sum(
        math.prod(s) for k, s in manifest.items() if not k.endswith(("running_mean", "running_var"))
    )
    n_params -= sum(1 for k in manifest if k.endswith("num_batches_tracked"))
    assert sum(p.numel() for p in model.parameters()) == n_params
    filter_fn = family_module(name).checkpoint_filter_fn
    # As released: a training checkpoint with DataParallel's prefix and thop's counters.
    wrapped = {
        "epoch": 300,
        "state_dict": {
            **{
                f"module.{k}": torch.zeros(s, dtype=torch.long if not s else torch.float32)
                for k, s in manifest.items()
            },
            "module.total_ops": torch.zeros(1),
            "module.total_params": torch.zeros(1),
        },
    }
    for checkpoint in (wrapped, {k.removeprefix("module."): v for k, v in wrapped["state_dict"].items()}):
        result = model.load_state_dict(filter_fn(checkpoint, model), strict=True)
        assert not result.missing_keys
        assert not result.unexpected_keys


def test_official_ghostnetv2_checkpoint_through_create_model(tmp_path: Path) -> None:
    manifest = _manifest("ghostnetv2_100")
    gen = torch.Generator().manual_seed(0)
    weights = {
        k: torch.randn(s, generator=gen).abs() + 0.5 if s else torch.tensor(0) for k, s in manifest.items()
    }
    path = tmp_path / "ck_ghostnetv2_10.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in weights.items()}, "epoch": 1}, path)
    model = eb.create_model("ghostnetv2_100", checkpoint_path=path)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in weights.items())


# ---------------------------------------------------------------------------------------------
# Gradient checkpointing gives the same gradients


@pytest.mark.parametrize("name", ["ghostnetv2_100", "g_ghost_regnetx_032"])
def test_grad_checkpointing_same_gradients(name: str) -> None:
    torch.manual_seed(0)
    model = eb.create_model(name, num_classes=4, drop_rate=0.0)
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        model(x).square().sum().backward()
        grads.append(
            model.conv1.weight.grad.clone()
            if hasattr(model, "conv1")
            else model.conv_stem.weight.grad.clone()
        )
    torch.testing.assert_close(grads[0], grads[1])
