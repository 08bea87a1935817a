"""DRNet: per-resolution BatchNorm on any model, routing, MACs accounting, training, loading.

The "Must show" run (digits, dynamic vs. fixed largest resolution) is ``benchmarks/drnet_digits.py``;
``test_digits_fewer_macs_at_equal_accuracy`` runs it in the slow suite.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

import efficient_backbones as eb
from efficient_backbones._macs import count_macs, count_params
from efficient_backbones.drnet import DRNet, DRNetFeatures, checkpoint_filter_fn, drnet_loss, resize_square
from efficient_backbones.layers.multi_bn import (
    MultiResolutionNorm,
    convert_to_multi_resolution_norm,
    expand_single_resolution_state_dict,
    set_resolution_index,
)

RES = (64, 48, 32)


def _small_drnet(seed: int = 0, **kwargs) -> DRNet:
    torch.manual_seed(seed)
    backbone = eb.create_model("tinynet_e", num_classes=5)
    return DRNet(backbone, resolutions=RES, predictor_size=32, **kwargs)


def _spread_routing(model: DRNet) -> None:
    """Large random predictor logits, so a random batch is routed to several resolutions."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        model.predictor.fc.weight.copy_(torch.randn(model.predictor.fc.weight.shape, generator=gen) * 50)


def _images(n: int = 12, size: int = 64) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(2))


# ---------------------------------------------------------------------------------------------
# Per-resolution BatchNorm


@pytest.mark.parametrize("factory", ["ours", "timm"])
def test_every_batchnorm_is_converted_and_starts_as_the_original(factory: str) -> None:
    torch.manual_seed(0)
    # timm's tinynet uses BatchNormAct2d (BN with its activation inside), ours plain BatchNorm2d.
    model = (eb.create_model if factory == "ours" else timm.create_model)("tinynet_e", num_classes=4).eval()
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    norms = convert_to_multi_resolution_norm(model, 3)
    assert len(norms) == n_bn
    assert all(isinstance(m.norms[0], nn.modules.batchnorm._BatchNorm) for m in norms)
    for index in range(3):
        set_resolution_index(model, index)
        with torch.no_grad():
            torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    assert convert_to_multi_resolution_norm(model, 3) == norms  # idempotent


def test_statistics_are_kept_per_resolution() -> None:
    model = eb.create_model("tinynet_e", num_classes=4)
    norms = convert_to_multi_resolution_norm(model, 2)
    model.train()
    set_resolution_index(norms, 1)
    model(torch.randn(2, 3, 48, 48) * 3 + 1)
    stem = norms[0]
    assert torch.count_nonzero(stem.norms[0].running_mean) == 0  # untouched
    assert torch.count_nonzero(stem.norms[1].running_mean) > 0
    with pytest.raises(IndexError):
        set_resolution_index(norms, 2)


def test_single_resolution_checkpoint_expands_to_every_resolution() -> None:
    torch.manual_seed(0)
    plain = eb.create_model("tinynet_e", num_classes=4).eval()
    converted = eb.create_model("tinynet_e", num_classes=4)
    convert_to_multi_resolution_norm(converted, 3)
    expanded = expand_single_resolution_state_dict(plain.state_dict(), converted)
    converted.load_state_dict(expanded, strict=True)
    assert expand_single_resolution_state_dict(expanded, converted).keys() == expanded.keys()
    converted.eval()
    x = torch.randn(1, 3, 64, 64)
    set_resolution_index(converted, 2)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), plain(x), rtol=1e-5, atol=1e-5)


def test_a_model_without_batchnorm_is_left_alone(caplog: pytest.LogCaptureFixture) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm([4, 6, 6]))
    assert convert_to_multi_resolution_norm(model, 2) == []
    assert "no" in caplog.text


# ---------------------------------------------------------------------------------------------
# Routing and cost


def test_inference_runs_each_image_once_at_its_predicted_resolution() -> None:
    model = _small_drnet().eval()
    _spread_routing(model)
    x = _images()
    with torch.no_grad():
        logits = model(x)
        indices = model.last_resolution_indices
        assert len(indices.unique()) >= 2, "the test needs a batch routed to several resolutions"
        torch.testing.assert_close(indices, model.predict_resolution(x).argmax(-1))
        for i in range(len(x)):
            j = int(indices[i])
            set_resolution_index(model.backbone, j)
            alone = model.backbone(resize_square(x[i : i + 1], RES[j]))
            torch.testing.assert_close(logits[i : i + 1], alone, rtol=1e-4, atol=1e-5)


def test_counted_macs_equal_the_routed_cost() -> None:
    model = _small_drnet().eval()
    _spread_routing(model)
    x = _images()
    counted = count_macs(model, inputs=x)  # FlopCounterMode over the real routed run
    expected = model.macs_per_image(model.last_resolution_indices).mean().item()
    assert counted == pytest.approx(expected, rel=1e-6)
    costs = model.resolution_macs()
    assert costs == sorted(costs, reverse=True)
    assert costs[0] == count_macs(
        eb.create_model("tinynet_e", num_classes=5), inputs=torch.zeros(1, 3, 64, 64)
    )


def test_training_forward_mixes_all_resolutions_and_trains_the_predictor() -> None:
    model = _small_drnet().train()
    x, y = _images(8), torch.arange(8) % 5
    out = model.forward_train(x)
    assert out.resolution_logits.shape == (8, 3, 5)
    assert torch.equal(out.selection.sum(-1), torch.ones(8))
    assert set(out.selection.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(out.logits, out.resolution_logits[torch.arange(8), out.selection.argmax(-1)])
    costs = torch.tensor(model.resolution_macs(), dtype=torch.float32)
    torch.testing.assert_close(out.expected_macs, costs[out.selection.argmax(-1)])
    loss, parts = drnet_loss(out, y, model.resolution_macs(), macs_weight=1.0, target_ratio=0.0)
    loss.backward()
    assert model.predictor.fc.weight.grad.abs().sum() > 0  # through the straight-through sample
    assert parts["constraint"] == pytest.approx(parts["macs_ratio"])
    _, relaxed = drnet_loss(out, y, model.resolution_macs(), target_ratio=1.0)
    assert relaxed["constraint"] == 0.0


def test_features_and_patch_tokens_use_the_largest_grid() -> None:
    model = _small_drnet().eval()
    _spread_routing(model)
    x = _images(6)
    with torch.no_grad():
        features = model.forward_features(x)
        tokens, grid = model.patch_tokens(x)
    assert features.shape == (6, model.num_features, 2, 2)  # 64 px / 32
    assert tokens.shape == (6, 4, model.num_features)
    assert grid == (2, 2)


def test_features_only_wrapper() -> None:
    model = DRNetFeatures(_small_drnet().eval(), out_indices=(0, 1, 2, 3, 4)).eval()
    _spread_routing(model.drnet)
    with torch.no_grad():
        maps = model(_images(6))
    assert [m.shape[-1] for m in maps] == [32, 16, 8, 4, 2]
    assert [m.shape[1] for m in maps] == model.feature_info.channels()


def test_drnet_resnet50_is_the_paper_setup() -> None:
    with torch.device("meta"):
        model = eb.create_model("drnet_resnet50")
        resnet50 = timm.create_model("resnet50")
    assert model.resolutions == (224, 168, 112)
    assert model.predictor_size == 128
    bn_affine = sum(m.weight.numel() * 2 for m in resnet50.modules() if isinstance(m, nn.BatchNorm2d))
    # ResNet-50 + two more BN sets + the predictor.
    assert count_params(model) == count_params(resnet50) + 2 * bn_affine + count_params(model.predictor)
    assert count_params(model.predictor) < 0.03 * count_params(resnet50)
    assert model.resolution_macs()[0] == count_macs(
        resnet50, inputs=torch.empty(1, 3, 224, 224, device="meta")
    )
    assert model.predictor_macs() < 0.02 * model.resolution_macs()[0]
    assert sum(isinstance(m, MultiResolutionNorm) for m in model.modules()) == 53


def test_backbone_checkpoint_loads_through_the_filter(tmp_path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(1)
    plain = eb.create_model("tinynet_e", num_classes=5)
    model = _small_drnet()
    predictor_before = {k: v.clone() for k, v in model.predictor.state_dict().items()}
    model.load_state_dict(checkpoint_filter_fn(plain.state_dict(), model), strict=True)
    assert torch.equal(model.backbone.conv_stem.weight, plain.conv_stem.weight)
    assert torch.equal(model.backbone.bn1.norms[2].weight, plain.bn1.weight)
    for k, v in model.predictor.state_dict().items():
        assert torch.equal(v, predictor_before[k])
    path = tmp_path / "drnet.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    assert checkpoint_filter_fn(model.state_dict(), model).keys() == model.state_dict().keys()


def test_predictor_takes_the_backbone_input_channels() -> None:
    model = DRNet(
        eb.create_model("tinynet_e", num_classes=3, in_chans=1), resolutions=(32, 16), predictor_size=16
    )
    assert model.resolution_macs()[0] > model.resolution_macs()[1]
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 3)


def test_wraps_other_families() -> None:
    for name in ("spconv_resnet50", "ghostnet_050"):
        if not eb.is_model(name):
            continue
        torch.manual_seed(0)
        model = DRNet(name, resolutions=(64, 32), predictor_size=32, num_classes=3).eval()
        with torch.no_grad():
            assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)


# ---------------------------------------------------------------------------------------------
# The "Must show" run


def _load_benchmark():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "drnet_digits.py"
    spec = importlib.util.spec_from_file_location("drnet_digits", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["drnet_digits"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_digits_fewer_macs_at_equal_accuracy(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load_benchmark()
    result = bench.run(log=lambda line: None)
    with capsys.disabled():
        sys.stdout.write("\n" + bench.report(result) + "\n")
    assert result.drnet_macs < result.fixed_macs
    assert result.drnet_macs_counted == pytest.approx(result.drnet_macs, rel=1e-6)
    # "Equal accuracy": within one test image per hundred of the fixed largest resolution.
    assert result.drnet_accuracy >= result.fixed_accuracy - 0.01
    assert result.fixed_accuracy > 0.9
