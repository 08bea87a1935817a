"""Vision towers: grids, crops, batching, the zoo's patch-token contract, CLIP layer selection,
specs and errors, on timm models, the zoo's registered families and tiny CLIPs built locally."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tiny_clip import open_clip_cfg, tiny_hf_clip, tiny_open_clip

import efficient_backbones as eb
from vidllm.interfaces import VisionTower
from vidllm.reducer import ReducerConfig, reduce_free_video_llm
from vidllm.towers import BackboneTower, HFCLIPTower, ImagePreprocess, OpenCLIPTower, build_tower


def random_frames(t: int = 5, h: int = 40, w: int = 56, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def check_tower(tower, frames: np.ndarray) -> torch.Tensor:
    """The VisionTower contract: shapes = grid, the full-box crop equals encode, one frame per
    batch gives the same features as all frames in one batch."""
    assert isinstance(tower, VisionTower)
    assert tower.max_batch_size >= len(frames)
    features = tower.encode(frames)
    assert features.shape == (len(frames), *tower.grid, tower.hidden_size)
    assert not features.requires_grad
    full = tower.encode_crop(frames, [(0.0, 0.0, 1.0, 1.0)] * len(frames))
    torch.testing.assert_close(full, features)
    batch = tower.max_batch_size
    try:
        tower.max_batch_size = 1
        one = tower.encode(frames)
    finally:
        tower.max_batch_size = batch
    # Convolution algorithms change with the batch size: allow float32 noise relative to the
    # features' scale (a random-init ResNet-50's features reach ~150; noise there is ~1e-4).
    scale = max(1.0, features.abs().max().item())
    torch.testing.assert_close(one, features, atol=1e-5 * scale, rtol=1e-4)
    return features


# -- timm models ---------------------------------------------------------------------------------


TIMM_TOWERS = {
    # a CNN: forward_features is a (B, C, h, w) map
    "resnet10t": {"image_size": 64},
    # a ViT: a token sequence, read through timm's forward_intermediates
    "vit_tiny_patch16_224": {"model_kwargs": {"img_size": 32, "patch_size": 8, "depth": 2}},
}


@pytest.fixture(scope="module", params=sorted(TIMM_TOWERS))
def timm_tower(request):
    return BackboneTower(request.param, **TIMM_TOWERS[request.param])


def test_timm_tower_contract(timm_tower):
    check_tower(timm_tower, random_frames(8))


def test_timm_tower_features_are_the_models_own(timm_tower):
    """The tokens are the model's last feature map (CNN) or its normed last-block patch tokens (ViT),
    row-major, and the grid matches them."""
    frames = random_frames(3)
    pixels = timm_tower.preprocess(torch.from_numpy(frames))
    model = timm_tower.model
    with torch.no_grad():
        out = model.forward_features(pixels)
        if out.ndim == 3:  # ViT: drop the class token, normed as forward_features does
            out = out[:, model.num_prefix_tokens :].reshape(3, *timm_tower.grid, -1).permute(0, 3, 1, 2)
    assert tuple(out.shape[-2:]) == timm_tower.grid
    torch.testing.assert_close(timm_tower.encode(frames), out.permute(0, 2, 3, 1))


def test_timm_vit_input_size_comes_from_the_built_model():
    """timm keeps a 224 cfg for a ViT built at 32: the tower must read the patch embedding's size."""
    tower = BackboneTower("vit_tiny_patch16_224", model_kwargs={"img_size": 32, "patch_size": 8, "depth": 2})
    assert tower.input_size == (32, 32)
    assert tower.grid == (4, 4)


def test_crop_encodes_the_cropped_pixels():
    """A crop of the left half, encoded, equals encoding the left half as its own frames."""
    tower = BackboneTower("resnet10t", image_size=64)
    frames = random_frames(3, 48, 80)
    crops = tower.encode_crop(frames, [(0.0, 0.0, 0.5, 1.0)] * 3)
    torch.testing.assert_close(crops, tower.encode(np.ascontiguousarray(frames[:, :, :40])))
    mixed = tower.encode_crop(frames, [(0.0, 0.0, 0.5, 1.0), (0.25, 0.5, 1.0, 1.0), (0.0, 0.0, 1.0, 1.0)])
    torch.testing.assert_close(mixed[1:2], tower.encode(np.ascontiguousarray(frames[1:2, 24:, 20:])))
    torch.testing.assert_close(mixed[2:], tower.encode(frames[2:]))


def test_reencode_mode_of_the_reducer_uses_encode_crop():
    tower = BackboneTower("resnet10t", image_size=128)  # a 4x4 grid
    frames = random_frames(4, 64, 64)
    features = tower.encode(frames)
    scores = torch.tensor([0.1, 0.9, 0.2, 0.3])
    patches = torch.zeros(4, 4, 4)
    patches[:, 0, 0] = 1.0  # the top-left corner is relevant
    config = ReducerConfig(
        num_frames=4, slow_frames=1, middle_frames=0, fast_grid=(0, 0), roi_ratio=0.5, roi_mode="reencode"
    )
    reduction = reduce_free_video_llm(
        features,
        scores,
        patches,
        config,
        reencode=lambda f, box: tower.encode_crop(frames[f : f + 1], [box])[0],
    )
    (segment,) = reduction.segments
    assert segment.frame == 1
    x0, y0, x1, y1 = segment.box
    assert (x0, y0) == (0.0, 0.0)
    assert x1 < 1
    assert y1 < 1
    expected = tower.encode_crop(frames[1:2], [segment.box])[0].permute(2, 0, 1)
    expected = torch.nn.functional.max_pool2d(expected, (1, 2), (1, 2), ceil_mode=True).permute(1, 2, 0)
    torch.testing.assert_close(segment.tokens, expected.flatten(0, 1))


def test_frozen_tower_stays_in_eval_mode():
    tower = BackboneTower("resnet10t", image_size=64)
    parent = torch.nn.Sequential(tower)
    parent.train()
    assert not tower.model.training
    assert not any(p.requires_grad for p in tower.parameters())
    with torch.enable_grad():
        assert not tower.encode(random_frames(1)).requires_grad


def test_backbone_checkpoint_and_spec_round_trip(tmp_path):
    tower = BackboneTower("resnet10t", image_size=64)
    frames = random_frames(2)
    save_file({k: v.contiguous() for k, v in tower.model.state_dict().items()}, tmp_path / "r.safetensors")
    spec = {
        "kind": "backbone",
        "model": "resnet10t",
        "image_size": 64,
        "checkpoint": str(tmp_path / "r.safetensors"),
    }
    loaded = build_tower(spec)
    torch.testing.assert_close(loaded.encode(frames), tower.encode(frames))
    torch.testing.assert_close(build_tower(loaded.to_spec()).encode(frames), tower.encode(frames))
    with pytest.raises(FileNotFoundError, match="missing_weights"):
        BackboneTower("resnet10t", checkpoint=tmp_path / "missing_weights.safetensors")
    with pytest.raises(ValueError, match=r"list_models\(\)"):
        BackboneTower("no_such_backbone_xyz")
    with pytest.raises(ValueError, match="built from a module instance"):
        BackboneTower(tower.model, image_size=64).to_spec()


# -- the zoo's registered families -----------------------------------------------------------------


# Families whose smallest variant is larger than this run in the slow suite: building and running
# a 20-35M-parameter model at its default input size takes tens of seconds on two shared cores.
DEFAULT_RUN_MAX_PARAMS = 10_000_000


def _smallest_per_family() -> list:
    """One variant per registered family: the one with the fewest parameters (counted on the meta
    device, nothing allocated); large ones are marked slow."""
    by_family: dict[str, list[str]] = {}
    for name in eb.list_models():
        by_family.setdefault(eb.model_family(name), []).append(name)
    if not by_family:
        return [
            pytest.param(
                None, marks=pytest.mark.skip(reason="no efficient_backbones family is registered yet")
            )
        ]

    def size(name: str) -> float:
        try:
            with torch.device("meta"):
                return sum(p.numel() for p in eb.create_model(name).parameters())
        except Exception:  # a family that cannot be built on the meta device: treat as large
            return float("inf")

    params = []
    for family, names in sorted(by_family.items()):
        sizes = {n: size(n) for n in names}
        name = min(names, key=sizes.get)
        marks = [pytest.mark.slow] if sizes[name] > DEFAULT_RUN_MAX_PARAMS else []
        params.append(pytest.param(name, id=family, marks=marks))
    return params


@pytest.mark.parametrize("name", _smallest_per_family())
def test_zoo_family_tower_contract(name):
    """Every registered family serves as a tower through patch_tokens, at its default input size."""
    tower = BackboneTower(name)
    frames = random_frames(2, 50, 70)
    features = check_tower(tower, frames)
    with torch.no_grad():
        tokens, grid = eb.patch_tokens(tower.model, tower.preprocess(torch.from_numpy(frames)))
    assert tuple(grid) == tower.grid
    torch.testing.assert_close(features.flatten(1, 2), tokens)


# -- open_clip -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def open_clip_model():
    model, _ = tiny_open_clip(open_clip_cfg(layers=3))
    return model


def _block_outputs(blocks, run) -> list[torch.Tensor]:
    """Outputs of every block, by forward hooks (independent of the towers' code paths)."""
    captured: list[torch.Tensor] = []
    handles = [
        b.register_forward_hook(lambda m, i, o: captured.append(o[0] if isinstance(o, tuple) else o))
        for b in blocks
    ]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return captured


@pytest.mark.parametrize("select_layer", [-2, -1, 0])
def test_open_clip_tower_selects_the_layer(open_clip_model, select_layer):
    tower = OpenCLIPTower(open_clip_model, select_layer=select_layer)
    frames = random_frames(3)
    features = check_tower(tower, frames)
    pixels = tower.preprocess(torch.from_numpy(frames))
    outputs = _block_outputs(
        open_clip_model.visual.transformer.resblocks, lambda: open_clip_model.visual(pixels)
    )
    expected = outputs[select_layer][:, 1:].reshape(3, *tower.grid, -1)
    torch.testing.assert_close(features, expected)
    assert tower.grid == (4, 4)
    assert tower.hidden_size == 64


def test_open_clip_tower_post_norm_equals_output_tokens(open_clip_model):
    """select_layer=-1 with post_norm is exactly open_clip's ``output_tokens``."""
    tower = OpenCLIPTower(open_clip_model, select_layer=-1, post_norm=True)
    cfg = open_clip_cfg(layers=3)
    cfg["vision_cfg"]["output_tokens"] = True
    twin, _ = tiny_open_clip(cfg)
    twin.load_state_dict(open_clip_model.state_dict())
    frames = random_frames(2)
    with torch.no_grad():
        _, tokens = twin.visual(tower.preprocess(torch.from_numpy(frames)))
    torch.testing.assert_close(tower.encode(frames), tokens.reshape(2, 4, 4, -1))


def test_open_clip_tower_spec_and_checkpoint(tmp_path, open_clip_model):
    path = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in open_clip_model.state_dict().items()}, path)
    spec = {"kind": "open_clip", "model_cfg": open_clip_cfg(layers=3), "pretrained": str(path)}
    tower = build_tower(spec)
    frames = random_frames(2)
    expected = OpenCLIPTower(open_clip_model).encode(frames)
    torch.testing.assert_close(tower.encode(frames), expected)
    torch.testing.assert_close(build_tower(tower.to_spec()).encode(frames), expected)
    with pytest.raises(ValueError, match="outside"):
        OpenCLIPTower(open_clip_model, select_layer=-4)


# -- transformers CLIP -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_clip():
    model, _ = tiny_hf_clip()
    return model


@pytest.mark.parametrize("select_layer", [-2, -1])
def test_hf_tower_selects_the_layer(hf_clip, select_layer):
    """LLaVA's feature_select: hidden_states[select_layer] without the class token; hidden_states[i]
    for i >= 1 is the output of encoder layer i - 1."""
    tower = HFCLIPTower(hf_clip, select_layer=select_layer)
    frames = random_frames(3)
    features = check_tower(tower, frames)
    pixels = tower.preprocess(torch.from_numpy(frames))
    vision = hf_clip.vision_model
    outputs = _block_outputs(vision.encoder.layers, lambda: vision(pixel_values=pixels))
    torch.testing.assert_close(features, outputs[select_layer][:, 1:].reshape(3, 4, 4, -1))


def test_hf_tower_from_a_clip_model_folder(tmp_path, hf_clip):
    """A CLIPModel folder (LLaVA loads its tower this way) gives the same features as the model."""
    hf_clip.save_pretrained(tmp_path)
    tower = build_tower(f"hf_clip:{tmp_path}")
    frames = random_frames(2)
    torch.testing.assert_close(tower.encode(frames), HFCLIPTower(hf_clip).encode(frames))
    assert tower.to_spec()["model"] == str(tmp_path)
    with pytest.raises(FileNotFoundError, match="no_model_here"):
        HFCLIPTower(tmp_path / "no_model_here")


# -- preprocessing and bad input ---------------------------------------------------------------------


def test_resize_and_pad_preprocessing():
    frames = torch.full((1, 20, 40, 3), 255, dtype=torch.uint8)  # white, 2:1
    resize = ImagePreprocess(size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), aspect="resize")
    torch.testing.assert_close(resize(frames), torch.ones(1, 3, 32, 32))
    pad = ImagePreprocess(
        size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), aspect="pad", interpolation="nearest"
    )
    x = pad(frames)
    # the frame fills the middle half of the rows; the rest is the mean colour (int(0.5 * 255) / 255)
    torch.testing.assert_close(x[..., 8:24, :], torch.ones(1, 3, 16, 32))
    fill = (int(0.5 * 255) / 255 - 0.5) / 0.5
    torch.testing.assert_close(x[..., :8, :], torch.full((1, 3, 8, 32), fill))
    torch.testing.assert_close(x[..., 24:, :], torch.full((1, 3, 8, 32), fill))


def test_bad_input():
    tower = BackboneTower("resnet10t", image_size=64)
    with pytest.raises(ValueError, match="uint8"):
        tower.encode(random_frames(1).astype(np.float32))
    with pytest.raises(ValueError, match="one box per frame"):
        tower.encode_crop(random_frames(2), [(0, 0, 1, 1)])
    with pytest.raises(ValueError, match="x1 > x0"):
        tower.encode_crop(random_frames(1), [(0.5, 0, 0.5, 1)])
    with pytest.raises(ValueError, match="unknown tower kind"):
        build_tower({"kind": "nope"})
    assert tower.encode(random_frames(0)).shape == (0, *tower.grid, tower.hidden_size)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_tower_on_cuda(open_clip_model, dtype):
    frames = random_frames(4)
    expected = OpenCLIPTower(open_clip_model).encode(frames)
    tower = OpenCLIPTower(copy.deepcopy(open_clip_model)).to("cuda", dtype)
    features = tower.encode(frames)
    assert features.device.type == "cuda"
    assert features.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(features.float().cpu(), expected, atol=tol, rtol=tol)
    torch.testing.assert_close(tower.encode_crop(frames, [(0, 0, 1, 1)] * 4), features)
