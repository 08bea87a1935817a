"""Relevance scorers on tiny CLIPs built locally: exact agreement with the models' own
embeddings, closed-form similarities on planted weights, checkpoints, specs and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tiny_clip import (
    build_dual_encoder_scorer,
    open_clip_cfg,
    plant_red_detector_hf,
    plant_red_detector_open_clip,
    red_patch_frames,
    tiny_hf_clip,
    tiny_open_clip,
)

from vidllm.interfaces import RelevanceScorer
from vidllm.reducer import ReducerConfig, reduce_free_video_llm
from vidllm.scorers import DualEncoderScorer, HFCLIPScorer, OpenCLIPScorer, build_scorer

QUESTION = "what is the dog doing"


def random_frames(t: int = 5, h: int = 40, w: int = 56, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def open_clip_scorer():
    model, tokenizer = tiny_open_clip()
    return OpenCLIPScorer(model, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def hf_scorer():
    model, tokenizer = tiny_hf_clip()
    return HFCLIPScorer(model, tokenizer=tokenizer)


# -- open_clip -----------------------------------------------------------------------------------


def test_open_clip_scores_equal_the_models_own_embeddings(open_clip_scorer):
    """Frame scores are cos(encode_image, encode_text); patch scores are open_clip's own
    ``output_tokens`` (tokens after ln_post) projected with ``visual.proj``."""

    scorer = open_clip_scorer
    frames = random_frames()
    frame_scores, patch_scores = scorer.score(frames, QUESTION)
    model = scorer.model
    pixels = scorer.preprocess(torch.from_numpy(frames))
    with torch.no_grad():
        text = model.encode_text(scorer.tokenizer([QUESTION]), normalize=True)[0]
        image = model.encode_image(pixels, normalize=True)
        # a second copy of the tower built with output_tokens=True, same weights
        cfg = open_clip_cfg()
        cfg["vision_cfg"]["output_tokens"] = True
        twin, _ = tiny_open_clip(cfg)
        twin.load_state_dict(model.state_dict())
        _, tokens = twin.visual(pixels)
        patches = F.normalize(tokens @ twin.visual.proj, dim=-1) @ text
    torch.testing.assert_close(frame_scores, image @ text)
    torch.testing.assert_close(patch_scores, patches.reshape(5, 4, 4))
    assert frame_scores.dtype == torch.float32
    assert patch_scores.abs().max() <= 1 + 1e-6


@pytest.mark.parametrize(("image_size", "patch_size"), [(32, 8), (48, 16), (32, 4)])
def test_patch_grid_follows_the_model_config(image_size, patch_size):
    model, tokenizer = tiny_open_clip(open_clip_cfg(image_size=image_size, patch_size=patch_size))
    scorer = OpenCLIPScorer(model, tokenizer=tokenizer)
    grid = image_size // patch_size
    assert scorer.patch_grid == (grid, grid)
    frame_scores, patch_scores = scorer.score(random_frames(3), QUESTION)
    assert frame_scores.shape == (3,)
    assert patch_scores.shape == (3, grid, grid)


def test_batching_does_not_change_scores(open_clip_scorer):
    frames = random_frames(7)
    open_clip_scorer.max_batch_size = 8
    full = open_clip_scorer.score(frames, QUESTION)
    open_clip_scorer.max_batch_size = 2
    try:
        split = open_clip_scorer.score(frames, QUESTION)
    finally:
        open_clip_scorer.max_batch_size = 32
    torch.testing.assert_close(full, split)


@pytest.fixture(scope="module")
def planted_open_clip_scorer():
    model, tokenizer = tiny_open_clip(open_clip_cfg(pool_type="avg"))
    plant_red_detector_open_clip(model)
    return OpenCLIPScorer(model, tokenizer=tokenizer)


RED_CELLS = [[], [(0, 0)], [(1, 2), (3, 3)], [(2, 1), (2, 2), (0, 3)], [(3, 0)], [(1, 1), (1, 2)]]


def test_planted_weights_give_closed_form_scores(planted_open_clip_scorer):
    """Red patches score +1/sqrt(2), grey ones -1/sqrt(2); a frame with ``n`` of 16 red patches
    scores ``r / sqrt(1 + r^2)`` with ``r = (2n - 16) / 16`` (see tests/tiny_clip.py)."""
    frames = red_patch_frames((4, 4), 8, RED_CELLS)
    frame_scores, patch_scores = planted_open_clip_scorer.score(frames, "where is the red ball")
    expected_patches = torch.full((len(RED_CELLS), 4, 4), -1 / math.sqrt(2))
    for t, cells in enumerate(RED_CELLS):
        for i, j in cells:
            expected_patches[t, i, j] = 1 / math.sqrt(2)
    torch.testing.assert_close(patch_scores, expected_patches, atol=1e-5, rtol=0)
    r = torch.tensor([(2 * len(c) - 16) / 16 for c in RED_CELLS])
    torch.testing.assert_close(frame_scores, r / torch.sqrt(1 + r**2), atol=1e-5, rtol=0)


def test_planted_signal_survives_resizing_and_drives_the_reducer(planted_open_clip_scorer):
    """Frames larger than the input (resized) keep the planted argmax; the reducer's slow path
    then picks the frames with the most red and centres its RoI on the red patches."""
    frames = red_patch_frames((4, 4), 24, RED_CELLS)  # 96x96 frames, resized to 32x32
    frame_scores, patch_scores = planted_open_clip_scorer.score(frames, "where is the red ball")
    for t, cells in enumerate(RED_CELLS):
        if cells:
            top = {divmod(int(i), 4) for i in torch.topk(patch_scores[t].flatten(), len(cells)).indices}
            assert top == set(cells)
    features = torch.randn(len(RED_CELLS), 4, 4, 8)
    config = ReducerConfig(num_frames=len(RED_CELLS), slow_frames=2, middle_frames=0, fast_grid=(1, 1))
    reduction = reduce_free_video_llm(features, frame_scores, patch_scores, config)
    assert reduction.frames("slow") == [2, 3]  # the two frames with the most red patches


def test_text_embedding_is_cached_per_question_and_dropped_on_load(open_clip_scorer):
    first = open_clip_scorer.text_embedding(QUESTION)
    assert open_clip_scorer.text_embedding(QUESTION) is first
    assert open_clip_scorer.text_embedding("a red ball") is not first
    open_clip_scorer.load_state_dict(open_clip_scorer.state_dict())
    assert open_clip_scorer.text_embedding(QUESTION) is not first
    torch.testing.assert_close(open_clip_scorer.text_embedding(QUESTION), first)


def test_open_clip_local_checkpoint_round_trip(tmp_path, open_clip_scorer):
    """state_dict -> safetensors / .pt -> build_scorer: the same scores."""
    frames = random_frames(4)
    expected = open_clip_scorer.score(frames, QUESTION)
    state = {k: v.contiguous() for k, v in open_clip_scorer.model.state_dict().items()}
    save_file(state, tmp_path / "tiny.safetensors")
    torch.save(state, tmp_path / "tiny.pt")
    for name in ("tiny.safetensors", "tiny.pt"):
        spec = {"kind": "open_clip", "model_cfg": open_clip_cfg(), "pretrained": str(tmp_path / name)}
        scorer = build_scorer(spec)
        torch.testing.assert_close(scorer.score(frames, QUESTION), expected)
        rebuilt = build_scorer(scorer.to_spec())
        torch.testing.assert_close(rebuilt.score(frames, QUESTION), expected)


def test_open_clip_local_dir_model(tmp_path, open_clip_scorer):
    """open_clip's own ``local-dir:`` layout (open_clip_config.json + weights) loads by name."""
    import json

    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": open_clip_cfg()}))
    state = {k: v.contiguous() for k, v in open_clip_scorer.model.state_dict().items()}
    save_file(state, tmp_path / "open_clip_model.safetensors")
    scorer = build_scorer(f"open_clip:local-dir:{tmp_path}")
    frames = random_frames(2)
    torch.testing.assert_close(scorer.score(frames, QUESTION), open_clip_scorer.score(frames, QUESTION))


class NotATensor:
    """A pickled object that weights_only=True must refuse to build."""


def test_checkpoint_errors(tmp_path):
    missing = tmp_path / "nowhere.safetensors"
    with pytest.raises(FileNotFoundError, match=r"nowhere\.safetensors"):
        OpenCLIPScorer(model_cfg=open_clip_cfg(), pretrained=str(missing))
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only"):
        OpenCLIPScorer(model_cfg=open_clip_cfg(), pretrained=str(tmp_path / "evil.pt"))
    save_file({"unrelated": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="missing keys"):
        OpenCLIPScorer(model_cfg=open_clip_cfg(), pretrained=str(tmp_path / "other.safetensors"))


def test_unknown_open_clip_names_say_where_to_find_names():
    with pytest.raises(ValueError, match=r"open_clip\.list_models\(\)") as info:
        OpenCLIPScorer("ViT-B-3")
    assert "ViT-B-32" in str(info.value)  # a close match is suggested
    with pytest.raises(ValueError, match="known tags"):
        OpenCLIPScorer("ViT-B-32", pretrained="no_such_tag")


# -- transformers CLIP ---------------------------------------------------------------------------


def test_hf_scores_equal_the_models_own_embeddings(hf_scorer):
    frames = random_frames()
    frame_scores, patch_scores = hf_scorer.score(frames, QUESTION)
    model = hf_scorer.model
    pixels = hf_scorer.preprocess(torch.from_numpy(frames))
    tokens = hf_scorer.tokenizer([QUESTION], return_tensors="pt")
    with torch.no_grad():
        text = F.normalize(model.get_text_features(tokens["input_ids"]).pooler_output, dim=-1)[0]
        image = F.normalize(model.get_image_features(pixels).pooler_output, dim=-1)
        hidden = model.vision_model(pixel_values=pixels).last_hidden_state[:, 1:]
        patches = F.normalize(model.visual_projection(model.vision_model.post_layernorm(hidden)), dim=-1)
    torch.testing.assert_close(frame_scores, image @ text)
    torch.testing.assert_close(patch_scores, (patches @ text).reshape(5, 4, 4))


def test_hf_planted_patch_scores():
    model, tokenizer = tiny_hf_clip()
    plant_red_detector_hf(model)
    scorer = HFCLIPScorer(model, tokenizer=tokenizer)
    frames = red_patch_frames((4, 4), 8, RED_CELLS)
    _, patch_scores = scorer.score(frames, "where is the red ball")
    for t, cells in enumerate(RED_CELLS):
        red = torch.zeros(4, 4, dtype=torch.bool)
        for i, j in cells:
            red[i, j] = True
        torch.testing.assert_close(patch_scores[t][red], torch.full((len(cells),), 1 / math.sqrt(2)))
        torch.testing.assert_close(patch_scores[t][~red], torch.full((16 - len(cells),), -1 / math.sqrt(2)))


def test_hf_folder_round_trip(tmp_path, hf_scorer):
    hf_scorer.model.save_pretrained(tmp_path)
    hf_scorer.tokenizer.save_pretrained(tmp_path)
    frames = random_frames(3)
    scorer = build_scorer(f"hf_clip:{tmp_path}")
    torch.testing.assert_close(scorer.score(frames, QUESTION), hf_scorer.score(frames, QUESTION))
    assert scorer.to_spec()["model"] == str(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing_clip"):
        HFCLIPScorer(tmp_path / "missing_clip")


# -- any dual encoder, and interchangeability ------------------------------------------------------


def test_dual_encoder_scores_equal_a_direct_computation():
    scorer = build_dual_encoder_scorer()
    assert scorer.patch_grid == (4, 4)
    frames = random_frames(4)
    frame_scores, patch_scores = scorer.score(frames, QUESTION)
    pixels = scorer.preprocess(torch.from_numpy(frames))
    tokens = scorer.tokenizer([QUESTION], return_tensors="pt")
    with torch.no_grad():
        text = F.normalize(scorer.text_encoder(tokens["input_ids"], tokens["attention_mask"]), dim=-1)[0]
        image, patch_map = scorer.image_encoder(pixels)
    torch.testing.assert_close(frame_scores, F.normalize(image, dim=-1) @ text)
    torch.testing.assert_close(patch_scores, F.normalize(patch_map.permute(0, 2, 3, 1), dim=-1) @ text)


def test_dual_encoder_contract_is_checked():
    class GlobalOnly(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    scorer = build_dual_encoder_scorer()
    with pytest.raises(TypeError, match="image_encoder must return"):
        DualEncoderScorer(GlobalOnly(), scorer.text_encoder, scorer.tokenizer, image_size=32)


def test_unfrozen_dual_encoder_passes_gradients():
    scorer = build_dual_encoder_scorer()
    trainable = DualEncoderScorer(
        scorer.image_encoder, scorer.text_encoder, scorer.tokenizer, image_size=32, frozen=False
    )
    trainable.image_encoder.requires_grad_(True)
    frame_scores, _ = trainable.score(random_frames(2), QUESTION)
    frame_scores.sum().backward()
    assert trainable.image_encoder.proj.weight.grad is not None


@pytest.fixture(scope="module")
def all_scorers(open_clip_scorer, hf_scorer):
    return {
        "open_clip": open_clip_scorer,
        "hf_clip": hf_scorer,
        "dual_encoder": build_scorer(
            {"kind": "dual_encoder", "builder": "tiny_clip:build_dual_encoder_scorer"}
        ),
    }


@pytest.mark.parametrize("kind", ["open_clip", "hf_clip", "dual_encoder"])
def test_scorers_are_interchangeable(all_scorers, kind):
    scorer = all_scorers[kind]
    assert isinstance(scorer, RelevanceScorer)
    frames = random_frames(3, 30, 50)
    frame_scores, patch_scores = scorer.score(frames, QUESTION)
    assert frame_scores.shape == (3,)
    assert patch_scores.shape == (3, *scorer.patch_grid)
    assert frame_scores.abs().max() <= 1 + 1e-6
    assert patch_scores.abs().max() <= 1 + 1e-6
    empty_frames, empty_patches = scorer.score(frames[:0], QUESTION)
    assert empty_frames.shape == (0,)
    assert empty_patches.shape == (0, *scorer.patch_grid)


def test_dual_encoder_spec_round_trip(all_scorers):
    scorer = all_scorers["dual_encoder"]
    spec = scorer.to_spec()
    assert spec["builder"] == "tiny_clip:build_dual_encoder_scorer"
    frames = random_frames(2)
    torch.testing.assert_close(build_scorer(spec).score(frames, QUESTION), scorer.score(frames, QUESTION))


def test_bad_input(open_clip_scorer):
    with pytest.raises(ValueError, match="non-empty"):
        open_clip_scorer.score(random_frames(1), "   ")
    with pytest.raises(ValueError, match="uint8"):
        open_clip_scorer.score(random_frames(1).astype(np.float32), QUESTION)
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        open_clip_scorer.score(random_frames(1)[0], QUESTION)
    with pytest.raises(ValueError, match="unknown scorer kind"):
        build_scorer({"kind": "nope"})
    with pytest.raises(ValueError, match="a built open_clip model needs its tokenizer"):
        OpenCLIPScorer(open_clip_scorer.model)
    with pytest.raises(ValueError, match="built from a module instance"):
        open_clip_scorer.to_spec()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scorer_on_cuda(dtype):
    model, tokenizer = tiny_open_clip()
    cpu = OpenCLIPScorer(model, tokenizer=tokenizer)
    frames = random_frames(4)
    expected = cpu.score(frames, QUESTION)
    gpu = OpenCLIPScorer(model, tokenizer=tokenizer).to("cuda", dtype)
    frame_scores, patch_scores = gpu.score(frames, QUESTION)
    assert frame_scores.device.type == "cuda"
    assert frame_scores.dtype == torch.float32
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(frame_scores.cpu(), expected[0], atol=tol, rtol=0)
    torch.testing.assert_close(patch_scores.cpu(), expected[1], atol=tol, rtol=0)
