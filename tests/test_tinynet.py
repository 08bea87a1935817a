"""TinyNet: timm parity (keys, shapes, logits, features), the paper's scaling, and the BN folding."""

from __future__ import annotations

import copy
import re

import pytest
import timm
import torch
from backbone_testing import perturb_batchnorm_
from torch import nn

import efficient_backbones as eb
from efficient_backbones._paper_figures import TINYNET_SCALING
from efficient_backbones.layers.conv_bn import conv_bn, fold_conv_bn
from efficient_backbones.tinynet import TINYNET_CFGS, TinyNet

VARIANTS = eb.list_models("tinynet_*")


def test_registry_has_all_five() -> None:
    assert VARIANTS == ["tinynet_a", "tinynet_b", "tinynet_c", "tinynet_d", "tinynet_e"]


@pytest.mark.parametrize("name", VARIANTS)
def test_scaling_and_input_size_follow_the_paper(name: str) -> None:
    r, w, d = TINYNET_SCALING[name]
    assert TINYNET_CFGS[name] == {"r": r, "w": w, "d": d}
    model = eb.create_model(name)
    assert model.pretrained_cfg["input_size"] == (3, int(224 * r), int(224 * r))
    assert isinstance(model, TinyNet)


@pytest.mark.parametrize("name", VARIANTS)
def test_matches_timm_keys_shapes_logits_and_features(name: str) -> None:
    torch.manual_seed(0)
    ref = timm.create_model(name).eval()
    perturb_batchnorm_(ref)
    ours = eb.create_model(name).eval()
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert list(our_sd) == list(ref_sd)
    assert {k: v.shape for k, v in our_sd.items()} == {k: v.shape for k, v in ref_sd.items()}
    ours.load_state_dict(ref_sd, strict=True)

    size = ours.pretrained_cfg["input_size"][-1]
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref_logits, our_logits = ref(x), ours(x)
    # Eval mode folds BN into the convolutions: equal to float rounding.
    torch.testing.assert_close(our_logits, ref_logits, rtol=1e-4, atol=1e-5)

    # Train mode runs BN unfolded: the same operations as timm, bit for bit.
    ref.train()
    ours.train()
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))

    ref_f = timm.create_model(name, features_only=True).eval()
    ref_f.load_state_dict({k: v for k, v in ref_sd.items() if k in ref_f.state_dict()}, strict=True)
    our_f = eb.create_model(name, features_only=True).eval()
    # timm's feature wrapper flattens the stages: ``blocks.0.0.conv_dw`` -> ``blocks_0.0.conv_dw``.
    flat = {re.sub(r"^blocks\.(\d+)", r"blocks_\1", k): v for k, v in ref_sd.items()}
    our_f.load_state_dict({k: v for k, v in flat.items() if k in our_f.state_dict()}, strict=True)
    assert our_f.feature_info.channels() == ref_f.feature_info.channels()
    assert our_f.feature_info.reduction() == ref_f.feature_info.reduction()
    with torch.no_grad():
        for a, b in zip(our_f(x), ref_f(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_checkpoint_filter_strips_wrappers() -> None:
    model = eb.create_model("tinynet_e")
    wrapped = {
        "state_dict": {f"module.{k}": v for k, v in timm.create_model("tinynet_e").state_dict().items()}
    }
    model.load_state_dict(eb.tinynet.checkpoint_filter_fn(wrapped, model), strict=True)


def test_drop_path_and_width_depth_arguments() -> None:
    model = TinyNet(width_mult=0.25, depth_mult=0.5, num_classes=3, drop_path_rate=0.2)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)
    # d = 0.5 rounds every stage to max(1, round(repeats / 2)) blocks.
    assert [len(stage) for stage in model.blocks] == [1, 1, 1, 2, 2, 2, 1]


class TestConvBnFolding:
    def _pair(self) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
        torch.manual_seed(0)
        conv, bn = nn.Conv2d(4, 6, 3, padding=1, bias=True), nn.BatchNorm2d(6)
        perturb_batchnorm_(bn)
        return conv, bn.eval()

    def test_equals_unfolded_in_eval_and_is_bn_in_train(self) -> None:
        conv, bn = self._pair()
        x = torch.randn(2, 4, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(conv_bn(x, conv, bn), bn(conv(x)), rtol=1e-5, atol=1e-6)
            bn.train()
            assert torch.equal(conv_bn(x, conv, bn), bn(conv(x)))

    def test_cache_sees_weight_updates(self) -> None:
        conv, bn = self._pair()
        x = torch.randn(1, 4, 8, 8)
        with torch.no_grad():
            before = conv_bn(x, conv, bn)
            bn.running_var.mul_(4.0)  # in place: bumps the tensor version
            after = conv_bn(x, conv, bn)
            torch.testing.assert_close(after, bn(conv(x)), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(before, after)
        conv2 = copy.deepcopy(conv)
        with torch.no_grad():
            conv2.weight.zero_()
            torch.testing.assert_close(conv_bn(x, conv2, bn), bn(conv2(x)), rtol=1e-5, atol=1e-6)

    def test_gradients_reach_conv_and_bn_in_eval(self) -> None:
        conv, bn = self._pair()
        x = torch.randn(2, 4, 8, 8)
        conv_bn(x, conv, bn).square().sum().backward()
        folded = [conv.weight.grad, conv.bias.grad, bn.weight.grad, bn.bias.grad]
        for p in (conv.weight, conv.bias, bn.weight, bn.bias):
            p.grad = None
        bn(conv(x)).square().sum().backward()
        for a, b in zip(folded, [conv.weight.grad, conv.bias.grad, bn.weight.grad, bn.bias.grad]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

    def test_fold_formula_and_deepcopy_after_inference_mode(self) -> None:
        conv, bn = self._pair()
        weight, bias = fold_conv_bn(conv, bn)
        x = torch.randn(1, 4, 5, 5)
        with torch.no_grad():
            torch.testing.assert_close(
                nn.functional.conv2d(x, weight, bias, padding=1), bn(conv(x)), rtol=1e-5, atol=1e-6
            )
        model = eb.create_model("tinynet_e").eval()
        with torch.inference_mode():
            model(torch.randn(1, 3, 64, 64))
        clone = copy.deepcopy(model)  # the cache holds normal tensors, so this works
        with torch.no_grad():
            x = torch.randn(1, 3, 64, 64)
            torch.testing.assert_close(clone(x), model(x))
