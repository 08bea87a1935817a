"""TNT: timm's layout and logits, the official checkpoint layout (manifests), input sizes other than
224, the timm interface, and parameter / MAC counts against the paper."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import efficient_backbones as eb
from efficient_backbones import tnt

MANIFESTS = Path(tnt.__file__).parent / "manifests"
VARIANTS = list(tnt.TNT_CFGS)
PAPER_PARAMS = {"tnt_s_patch16_224": 23.8, "tnt_b_patch16_224": 65.6}  # REFERENCE.md, M
PAPER_MACS = {"tnt_s_patch16_224": 5.2, "tnt_b_patch16_224": 14.1}  # G
TINY = {"embed_dim": 48, "inner_dim": 8, "depth": 2, "num_heads_outer": 4, "num_heads_inner": 2}


def _tiny(**kwargs) -> tnt.TNT:
    return eb.create_model("tnt_s_patch16_224", num_classes=5, **{**TINY, **kwargs})


def _on_meta(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return eb.create_model(name, **kwargs)


@pytest.mark.parametrize("name", VARIANTS)
def test_state_dict_keys_and_shapes_are_timms(name):
    ours = _on_meta(name).state_dict()
    with torch.device("meta"):
        theirs = timm.create_model(name).state_dict()
    assert list(ours) == list(theirs)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


@pytest.mark.parametrize(
    "name", ["tnt_s_patch16_224", pytest.param("tnt_b_patch16_224", marks=pytest.mark.slow)]
)
def test_logits_match_timm_with_timms_weights(name):
    torch.manual_seed(0)
    reference = timm.create_model(name).eval()
    ours = eb.create_model(name).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    # Fused attention vs timm's explicit softmax: equal to float32 rounding (measured ~1e-6).
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_tiny_matches_timm_at_its_size_and_intermediates():
    torch.manual_seed(1)
    reference = timm.create_model("tnt_s_patch16_224", img_size=64, num_classes=5, **TINY).eval()
    ours = _tiny(img_size=64).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)
        final, maps = ours.forward_intermediates(x, indices=2)
        ref_final, ref_maps = reference.forward_intermediates(x, indices=2)
    torch.testing.assert_close(final, ref_final, rtol=1e-5, atol=1e-5)
    for a, b in zip(maps, ref_maps, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# --- official layout ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", VARIANTS)
def test_official_manifest_loads_strictly(name):
    manifest = json.loads((MANIFESTS / f"{name}.json").read_text())
    state = {k: torch.empty(shape, device="meta") for k, shape in manifest.items()}
    model = _on_meta(name)
    filtered = tnt.checkpoint_filter_fn(state, model)
    result = model.load_state_dict(filtered, strict=True, assign=True)
    assert not result.missing_keys
    assert not result.unexpected_keys
    assert len(filtered) == len(manifest) - 1  # only the unused outer_tokens is dropped


_TO_OFFICIAL = (
    ("pixel_embed.", "patch_embed."),
    ("patch_pos", "outer_pos"),
    ("pixel_pos", "inner_pos"),
    ("norm1_proj", "proj_norm1"),
    ("norm2_proj", "proj_norm2"),
    ("norm_in.", "inner_norm1."),
    ("attn_in.", "inner_attn."),
    ("norm_mlp_in.", "inner_norm2."),
    ("mlp_in.", "inner_mlp."),
    ("norm_out.", "outer_norm1."),
    ("attn_out.", "outer_attn."),
    ("norm_mlp.", "outer_norm2."),
    (".mlp.", ".outer_mlp."),
)


def _official_like(model: tnt.TNT) -> dict[str, torch.Tensor]:
    """Our weights in the official release's layout (names, per-word ``inner_pos``, ``outer_tokens``)."""
    out = {}
    for key, value in model.state_dict().items():
        for ours, theirs in _TO_OFFICIAL:
            key = key.replace(ours, theirs)
        if key == "inner_pos":
            value = value.flatten(2).transpose(1, 2)
        out[key] = value
    out["outer_tokens"] = torch.zeros(1, model.num_patches, model.embed_dim)
    return out


def test_official_layout_reproduces_outputs():
    torch.manual_seed(2)
    model = _tiny(img_size=64).eval()
    official = _official_like(model)
    assert official["inner_pos"].shape == (1, 16, TINY["inner_dim"])
    assert "blocks.0.inner_mlp.fc1.weight" in official
    fresh = _tiny(img_size=64).eval()
    fresh.load_state_dict(tnt.checkpoint_filter_fn(official, fresh), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_filter_resamples_patch_positions_to_the_models_grid():
    source = _tiny(img_size=64)
    target = _tiny(img_size=96)
    filtered = tnt.checkpoint_filter_fn(_official_like(source), target)
    assert filtered["patch_pos"].shape == (1, 1 + 36, TINY["embed_dim"])
    torch.testing.assert_close(filtered["patch_pos"][:, 0], source.patch_pos[:, 0])  # class token untouched
    target.load_state_dict(filtered, strict=True)


# --- input sizes and interface ------------------------------------------------------------------


@pytest.mark.parametrize("size", [(224, 224), (96, 160), (64, 64), (70, 50)])
def test_runs_at_other_input_sizes(size):
    model = _tiny().eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        logits = model(x)
        tokens, grid = model.patch_tokens(x)
    assert logits.shape == (2, 5)
    assert grid == (size[0] // 16, size[1] // 16)
    assert tokens.shape == (2, grid[0] * grid[1], TINY["embed_dim"])


def test_position_embedding_follows_the_grid():
    model = _tiny().eval()
    assert model._patch_pos_for((14, 14)) is model.patch_pos
    resized = model._patch_pos_for((6, 10))
    assert resized.shape == (1, 1 + 60, TINY["embed_dim"])
    grid = model.patch_pos[:, 1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(6, 10), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(resized[:, 1:], expected.flatten(2).transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_patch_tokens_are_the_normalised_non_class_tokens():
    model = _tiny().eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        tokens, grid = model.patch_tokens(x)
        features = model.forward_features(x)
    assert grid == (14, 14)
    torch.testing.assert_close(tokens, features[:, 1:])


def test_features_only_and_heads():
    features = _tiny(features_only=True, out_indices=2).eval()
    with torch.no_grad():
        maps = features(torch.randn(1, 3, 64, 96))
    assert [m.shape for m in maps] == [(1, TINY["embed_dim"], 4, 6)] * 2
    model = _tiny().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        model.reset_classifier(3, global_pool="avg")
        assert model.get_classifier().out_features == 3
        avg = model.forward_head(model.forward_features(x), pre_logits=True)
    assert pre.shape == avg.shape == (2, TINY["embed_dim"])
    assert not torch.allclose(pre, avg)
    assert model.no_weight_decay() == {"patch_pos", "pixel_pos", "cls_token"}


def test_training_step_and_grad_checkpointing():
    torch.manual_seed(3)
    model = _tiny(drop_path_rate=0.1, proj_drop_rate=0.1, attn_drop_rate=0.1)
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        plain = model(x)
        model.set_grad_checkpointing(True)
        torch.testing.assert_close(model(x), plain)


def test_input_smaller_than_a_patch_fails_clearly():
    with pytest.raises(ValueError, match="smaller than one"):
        _tiny().eval()(torch.randn(1, 3, 8, 64))


def test_fused_attention_is_counted_by_the_flop_counter():
    q = torch.randn(1, 2, 16, 8)
    counter = FlopCounterMode(display=False)
    with counter:
        F.scaled_dot_product_attention(q, q, q)
    assert counter.get_total_flops() == 2 * (2 * 2 * 16 * 16 * 8)  # two matmuls, 2 FLOPs per MAC


# --- published figures --------------------------------------------------------------------------


@pytest.mark.parametrize("name", VARIANTS)
def test_parameter_counts(name):
    params = sum(p.numel() for p in _on_meta(name).parameters())
    assert abs(params / 1e6 - PAPER_PARAMS[name]) / PAPER_PARAMS[name] < 0.01


@pytest.mark.parametrize(
    "name", ["tnt_s_patch16_224", pytest.param("tnt_b_patch16_224", marks=pytest.mark.slow)]
)
def test_macs_match_the_paper(name):
    model = eb.create_model(name).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    macs = counter.get_total_flops() / 2e9
    assert abs(macs - PAPER_MACS[name]) / PAPER_MACS[name] < 0.03, macs


def test_pretrained_loads_an_official_layout_file(tmp_path):
    torch.manual_seed(4)
    source = eb.create_model("tnt_s_patch16_224", img_size=64, **TINY).eval()
    path = tmp_path / "tnt.pth.tar"
    torch.save({"state_dict_ema": _official_like(source)}, path)
    model = eb.create_model(
        "tnt_s_patch16_224", pretrained=True, pretrained_cfg_overlay={"file": str(path)}, img_size=64, **TINY
    ).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)
