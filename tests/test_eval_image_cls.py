"""Image classification on real digits: data split, fine-tuning, top-1/5, params, MACs, images/s."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from efficient_backbones._macs import count_macs, count_params
from eval.image_cls import (
    ImageClsConfig,
    create_classifier,
    format_table,
    load_digits_data,
    run_digits_suite,
    run_image_cls,
)


def test_digits_split_is_fixed_stratified_and_disjoint():
    a, b = load_digits_data(), load_digits_data()
    assert torch.equal(a.test_x, b.test_x)
    assert torch.equal(a.train_y, b.train_y)
    assert len(a.train_y) == 1347
    assert len(a.test_y) == 450
    assert a.train_x.shape[1:] == (1, 8, 8)
    assert float(a.train_x.max()) == 1.0
    test_counts = np.bincount(a.test_y.numpy(), minlength=10)
    all_counts = test_counts + np.bincount(a.train_y.numpy(), minlength=10)
    assert np.abs(test_counts - 0.25 * all_counts).max() <= 1  # stratified: a quarter of each class
    train = {x.numpy().tobytes() for x in a.train_x}
    overlap = sum(x.numpy().tobytes() in train for x in a.test_x)
    assert overlap <= 5  # the 1,797 digits hold a few exact duplicates; the split itself is disjoint


def test_fine_tune_a_tiny_model_for_a_few_steps(tmp_path):
    config = ImageClsConfig(
        model="tinynet_e", input_size=32, train_epochs=1, max_steps=3, batch_size=32, threads=1,
        save=str(tmp_path / "tinynet_e_digits.safetensors"),
    )  # fmt: skip
    threads = torch.get_num_threads()
    result = run_image_cls(config)
    assert torch.get_num_threads() == threads  # the caller's thread count is restored
    assert result["train_steps"] == 3
    assert np.isfinite(result["final_loss"])
    assert result["n_test"] == 450
    assert result["num_classes"] == 10
    assert 0.0 <= result["top1"] <= result["top5"] <= 1.0
    assert result["images_per_s"] > 0
    assert result["threads"] == 1
    model = create_classifier("tinynet_e", 10)
    assert result["params"] == count_params(model)
    assert result["macs"] == count_macs(model, (3, 32, 32))  # FlopCounterMode FLOPs / 2 at the input size
    # the saved weights reproduce the evaluation exactly
    again = run_image_cls(ImageClsConfig(model="tinynet_e", input_size=32, checkpoint=config.save, threads=1))
    assert (again["top1"], again["top5"]) == (result["top1"], result["top5"])
    assert "| tinynet_e | digits | 32 | 1 |" in format_table([result])


def test_imagefolder_and_a_checkpoint_for_another_head(tmp_path):
    from PIL import Image
    from safetensors.torch import save_file

    for split in ("train", "test"):
        for c, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
            folder = tmp_path / "data" / split / f"class_{c}"
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (20 + i, 24), colour).save(folder / f"{i}.png")
    ten_class = create_classifier("tinynet_e", 10)
    save_file(
        {k: v.contiguous() for k, v in ten_class.state_dict().items()}, str(tmp_path / "ten.safetensors")
    )
    result = run_image_cls(
        ImageClsConfig(
            model="tinynet_e", data=f"imagefolder:{tmp_path / 'data'}", input_size=32,
            checkpoint=str(tmp_path / "ten.safetensors"), threads=1,
        )
    )  # fmt: skip
    assert result["num_classes"] == 2
    assert result["n_test"] == 6
    assert result["n_train"] == 6
    assert result["top5"] == 1.0  # two classes: the top-2 always holds the label
    assert sorted(result["reinitialised"]) == ["classifier.bias", "classifier.weight"]
    with pytest.raises(ValueError, match="imagefolder"):
        run_image_cls(ImageClsConfig(model="tinynet_e", data="cifar"))


@pytest.mark.slow
def test_zoo_models_reach_97_percent_on_digits():
    """ghostnet_100, tinynet_e, vig_ti_224 and pvig_ti_224 from random initialisation, fine-tuned on
    the digits train split at 32 px (``python -m eval image-cls-suite`` prints the same table)."""
    results = run_digits_suite(["ghostnet_100", "tinynet_e", "vig_ti_224", "pvig_ti_224"], threads=1)
    for result in results:
        assert result["top1"] >= 0.97, (result["model"], result["top1"])
