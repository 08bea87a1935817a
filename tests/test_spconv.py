"""SPConv: the layer against a from-the-equations computation, its cost, and spconv_resnet50's layout.

The official model (github.com/qiulinzhang/SPConv.pytorch at 78c734f, built locally) has exactly
the keys and shapes of ``efficient_backbones/manifests/spconv_resnet50.json`` and 18,345,448
parameters; with its weights our model gave bit-identical logits (checked when the manifest was
made; the official code is not part of this repository).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from backbone_testing import perturb_batchnorm_
from safetensors.torch import save_file
from torch import nn

import efficient_backbones as eb
from efficient_backbones._macs import count_macs, count_params
from efficient_backbones.layers.spconv import SPConv2d
from efficient_backbones.spconv import SPBottleneck, checkpoint_filter_fn

MANIFEST = Path(eb.__file__).parent / "manifests" / "spconv_resnet50.json"


def _from_the_equations(layer: SPConv2d, x: torch.Tensor) -> torch.Tensor:
    """Paper Sec. 3 written out with functional ops, independently of the module's forward."""
    c_rep = int(x.shape[1] * 0.5)
    rep, red = x[:, :c_rep], x[:, c_rep:]
    stride = layer.stride

    def bn(t: torch.Tensor, m: nn.BatchNorm2d) -> torch.Tensor:
        return (t - m.running_mean[:, None, None]) / torch.sqrt(
            m.running_var[:, None, None] + m.eps
        ) * m.weight[:, None, None] + m.bias[:, None, None]

    pooled_rep = F.avg_pool2d(rep, 2, 2, ceil_mode=True) if stride == 2 else rep
    pooled_red = F.avg_pool2d(red, 2, 2, ceil_mode=True) if stride == 2 else red
    u_rep = bn(
        F.conv2d(rep, layer.gwc.weight, stride=stride, padding=1, groups=2)
        + F.conv2d(pooled_rep, layer.pwc.weight),
        layer.bn1,
    )
    u_red = bn(F.conv2d(pooled_red, layer.conv1x1.weight, layer.conv1x1.bias), layer.bn2)
    s_rep, s_red = u_rep.mean(dim=(2, 3)), u_red.mean(dim=(2, 3))
    beta = torch.exp(s_rep) / (torch.exp(s_rep) + torch.exp(s_red))
    return beta[:, :, None, None] * u_rep + (1 - beta[:, :, None, None]) * u_red


@pytest.mark.parametrize(("stride", "size"), [(1, 8), (2, 8), (2, 7)])
def test_layer_equals_the_equations(stride: int, size: int) -> None:
    torch.manual_seed(0)
    layer = perturb_batchnorm_(SPConv2d(16, 12, stride=stride)).eval()
    x = torch.randn(2, 16, size, size)
    with torch.no_grad():
        out = layer(x)
        expected = _from_the_equations(layer, x)
    assert out.shape == (2, 12, -(-size // stride), -(-size // stride))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_layer_cost_and_parameters() -> None:
    c_in, c_out = 64, 64
    layer = SPConv2d(c_in, c_out)
    rep = c_in // 2
    # gwc (groups=2) + pwc on the representative half, 1x1 (+bias) on the redundant half, two BNs.
    expected = rep * c_out * 9 // 2 + rep * c_out + (c_in - rep) * c_out + c_out + 4 * c_out
    assert count_params(layer) == expected
    vanilla = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    x = torch.randn(1, c_in, 14, 14)
    ratio = count_macs(layer, inputs=x) / count_macs(vanilla, inputs=x)
    assert ratio == pytest.approx((4.5 * rep + rep + (c_in - rep)) / (9 * c_in))  # 0.361 at alpha 1/2


def test_layer_validates_arguments() -> None:
    with pytest.raises(ValueError, match="stride"):
        SPConv2d(8, 8, stride=3)
    with pytest.raises(ValueError, match="empty"):
        SPConv2d(8, 8, alpha=1.0)
    assert SPConv2d(8, 8, alpha=0.25).in_chs_rep == 2


def test_gradients_reach_every_branch() -> None:
    layer = SPConv2d(8, 8, stride=2).train()
    layer(torch.randn(4, 8, 6, 6)).square().mean().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name  # noqa: PT018


def test_spconv_resnet50_figures_and_layout() -> None:
    with torch.device("meta"):
        model = eb.create_model("spconv_resnet50")
        macs = count_macs(model, inputs=torch.empty(1, 3, 224, 224))
    assert count_params(model) == 18_345_448  # the official model's count; paper 18.35M
    assert macs == 2_907_439_104  # paper 2.91G
    manifest = json.loads(MANIFEST.read_text())
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == manifest
    assert sum(isinstance(m, SPBottleneck) for m in model.modules()) == 16


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_official_layout_loads_through_the_filter(tmp_path, fmt: str) -> None:
    """An official training checkpoint (``state_dict`` of a DataParallel model) loads strictly."""
    manifest = json.loads(MANIFEST.read_text())
    gen = torch.Generator().manual_seed(0)
    official = {
        f"module.{k}": torch.randn(shape, generator=gen) if shape else torch.tensor(7)
        for k, shape in manifest.items()
    }
    if fmt == "safetensors":
        path = tmp_path / "spconv_resnet50.safetensors"
        save_file(official, str(path))
    else:
        path = tmp_path / "spconv_resnet50.pth"
        torch.save({"state_dict": official, "epoch": 90}, path)
    model = eb.create_model("spconv_resnet50", checkpoint_path=path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, official[f"module.{key}"]), key
    assert set(checkpoint_filter_fn({"state_dict": official}, model)) == set(manifest)


def test_spconv_resnet50_forward_and_features_at_odd_size() -> None:
    model = eb.create_model("spconv_resnet50", num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 72, 72)).shape == (1, 3)
    features = eb.create_model("spconv_resnet50", features_only=True).eval()
    with torch.no_grad():
        maps = features(torch.randn(1, 3, 100, 100))
    assert [tuple(m.shape[1:]) for m in maps] == [
        (64, 50, 50),
        (256, 25, 25),
        (512, 13, 13),
        (1024, 7, 7),
        (2048, 4, 4),
    ]
