"""Free Video-LLM on real transformers video-LLMs, tested on tiny random models built here.

Everything is real: transformers' own LlavaNextVideo / LlavaOnevision / Qwen2-VL / Qwen2.5-VL
models and processors (tiny configs, random weights), a byte-level BPE tokenizer trained here, and
the project's CLIP relevance scorer (:class:`vidllm.scorers.HFCLIPScorer`) with an image tower
that is the LLaVA model's own vision tower. What is checked:

- keep-everything reduction reproduces the model's own video path (logits; Qwen2-VL's 3D rotary
  positions; greedy generation with the KV cache);
- the visual embeddings fed equal ``plan(config, grid, units).total`` over many configurations;
- the slow path follows the scorer, boxes land inside the frame, answers are deterministic;
- bad input fails with a clear message.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from vidllm.adapters import LlavaVideoReducerAdapter, Qwen2VLReducerAdapter  # noqa: E402
from vidllm.adapters.base import _centres, _spans_adaptive, crop_frames, segment_cells  # noqa: E402
from vidllm.adapters.llava import processor_visible_region  # noqa: E402
from vidllm.reducer import ReducerConfig, UniformConfig, plan, top_frames  # noqa: E402
from vidllm.scorers import HFCLIPScorer  # noqa: E402

CORPUS = [
    "user what is happening in the video? assistant a person is walking a dog in the park.",
    "USER: which colour is the car? ASSISTANT: the car is red and it drives past the house.",
]
QUESTION = "what is happening in the video?"


def bpe_tokenizer(specials: list[str], append_eos: bool = False, **special_tokens):
    """A real byte-level BPE tokenizer (lossless round trip), trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 5, trainer)
    if append_eos:
        eos = special_tokens["eos_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"$A {eos}", special_tokens=[(eos, tok.token_to_id(eos))]
        )
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **special_tokens)


LLAVA_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
    "{% if c['type'] == 'video' %}<video>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %} {% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
    "{% if c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_text_config(tokenizer, model_type: str, **extra) -> dict:
    return dict(
        model_type=model_type,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **extra,
    )


# ----------------------------------------------------------------------------------------------
# tiny models
# ----------------------------------------------------------------------------------------------


def build_llava_next_video(image_size: int = 56, patch_size: int = 7, layers: int = 2):
    from transformers.models.llava_next_video.video_processing_llava_next_video import (
        LlavaNextVideoVideoProcessor,
    )

    tok = bpe_tokenizer(
        ["<pad>", "<s>", "</s>", "<video>", "<image>"],
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"video_token": "<video>", "image_token": "<image>"},
    )
    processor = transformers.LlavaNextVideoProcessor(
        video_processor=LlavaNextVideoVideoProcessor(
            size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}
        ),
        image_processor=transformers.LlavaNextImageProcessor(),
        tokenizer=tok,
        chat_template=LLAVA_TEMPLATE,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
    )
    config = transformers.LlavaNextVideoConfig(
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=layers,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
            projection_dim=32,
        ),
        text_config=tiny_text_config(tok, "llama"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=[[image_size, image_size]],
    )
    torch.manual_seed(0)
    return transformers.LlavaNextVideoForConditionalGeneration(config).eval(), processor


def build_llava_onevision():
    from transformers.models.llava_onevision.video_processing_llava_onevision import (
        LlavaOnevisionVideoProcessor,
    )

    tok = bpe_tokenizer(
        ["<|endoftext|>", "<|im_end|>", "<video>", "<image>"],
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"video_token": "<video>", "image_token": "<image>"},
    )
    processor = transformers.LlavaOnevisionProcessor(
        image_processor=transformers.LlavaOnevisionImageProcessor(size={"height": 42, "width": 42}),
        video_processor=LlavaOnevisionVideoProcessor(size={"height": 42, "width": 42}),
        tokenizer=tok,
        chat_template=LLAVA_TEMPLATE,
        num_image_tokens=36,
        vision_feature_select_strategy="full",
    )
    config = transformers.LlavaOnevisionConfig(
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=42,
            patch_size=7,
        ),
        text_config=tiny_text_config(tok, "qwen2"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=[[42, 42]],
    )
    torch.manual_seed(1)
    return transformers.LlavaOnevisionForConditionalGeneration(config).eval(), processor


def build_qwen(model_type: str):
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    tok = bpe_tokenizer(
        [
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|video_pad|>",
            "<|image_pad|>",
        ],
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    # frames of about 56 x 84 pixels -> a 2 x 3 grid of merged tokens
    size = {"shortest_edge": 56 * 56, "longest_edge": 56 * 84}
    video_processor = Qwen2VLVideoProcessor(size=size, cap_pixels_per_frame=False)
    processor_cls = (
        transformers.Qwen2VLProcessor if model_type == "qwen2_vl" else transformers.Qwen2_5_VLProcessor
    )
    processor = processor_cls(
        image_processor=Qwen2VLImageProcessor(size=size),
        tokenizer=tok,
        video_processor=video_processor,
        chat_template=QWEN_TEMPLATE,
    )
    text = tiny_text_config(
        tok, "", rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}
    )
    text.pop("model_type")
    ids = {
        "video_token_id": tok.convert_tokens_to_ids("<|video_pad|>"),
        "image_token_id": tok.convert_tokens_to_ids("<|image_pad|>"),
        "vision_start_token_id": tok.convert_tokens_to_ids("<|vision_start|>"),
    }
    torch.manual_seed(2)
    if model_type == "qwen2_vl":
        vision = dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2)
        config = transformers.Qwen2VLConfig(vision_config=vision, text_config=text, **ids)
        return transformers.Qwen2VLForConditionalGeneration(config).eval(), processor
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        window_size=56,
        fullatt_block_indexes=[1],
        tokens_per_second=4,
    )
    config = transformers.Qwen2_5_VLConfig(vision_config=vision, text_config=text, **ids)
    return transformers.Qwen2_5_VLForConditionalGeneration(config).eval(), processor


BUILDERS = {
    "llava_next_video": build_llava_next_video,
    "llava_onevision": build_llava_onevision,
    "qwen2_vl": lambda: build_qwen("qwen2_vl"),
    "qwen2_5_vl": lambda: build_qwen("qwen2_5_vl"),
}
LLAVA = ("llava_next_video", "llava_onevision")
QWEN = ("qwen2_vl", "qwen2_5_vl")


@pytest.fixture(scope="module")
def built():
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = BUILDERS[name]()
        return cache[name]

    return get


# ----------------------------------------------------------------------------------------------
# a real CLIP relevance scorer, its image tower shared with the LLaVA model when it can be
# ----------------------------------------------------------------------------------------------


def clip_scorer(model, tokenizer) -> HFCLIPScorer:
    """The project's CLIP scorer; for LLaVA-NeXT-Video its image tower *is* the model's vision tower."""
    vision_config = getattr(model.config, "vision_config", None)
    share = vision_config is not None and vision_config.model_type == "clip_vision_model"
    if share:
        vision = vision_config.to_dict()
    else:
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
        vision.update(image_size=56, patch_size=14)
    clip_tokenizer = bpe_tokenizer(
        list(tokenizer.all_special_tokens),
        eos_token=tokenizer.eos_token,
        pad_token=tokenizer.pad_token,
        append_eos=True,
    )
    text = dict(
        vocab_size=len(clip_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=128,
        eos_token_id=clip_tokenizer.eos_token_id,  # CLIP pools the text at its end-of-text token
        bos_token_id=None,
        pad_token_id=clip_tokenizer.pad_token_id,
    )
    torch.manual_seed(3)
    clip = transformers.CLIPModel(
        transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    )
    if share:
        clip.vision_model.load_state_dict(model.model.vision_tower.state_dict())
    return HFCLIPScorer(clip.eval(), tokenizer=clip_tokenizer)


def make_adapter(built, name: str, **kwargs):
    model, processor = built(name)
    cls = LlavaVideoReducerAdapter if name in LLAVA else Qwen2VLReducerAdapter
    if "scorer" not in kwargs:
        kwargs["scorer"] = clip_scorer(model, processor.tokenizer)
    return cls(model, processor, **kwargs)


def video(num_frames: int, height: int = 48, width: int = 72, seed: int = 0) -> np.ndarray:
    """A moving bright square on a noisy background: frames differ, and so do their regions."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 60, (num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        x = (t * 7) % (width - 16)
        frames[t, 10:26, x : x + 16] = 230
    return frames


# ----------------------------------------------------------------------------------------------
# keep-everything equals the model's own video path
# ----------------------------------------------------------------------------------------------


def reference_inputs(processor, adapter, frames):
    return processor(text=adapter.prompt_text(QUESTION), videos=[frames], return_tensors="pt")


@pytest.mark.parametrize("name", LLAVA)
def test_llava_keep_all_reproduces_the_models_video_path(built, name):
    """features="native" + every frame at full resolution == the model's own pooled video tokens."""
    model, processor = built(name)
    frames = video(4)
    adapter = make_adapter(built, name, features="native", reducer=UniformConfig(num_frames=4), scorer=None)
    prepared = adapter.prepare(frames, QUESTION)
    ref = reference_inputs(processor, adapter, frames)
    with torch.no_grad():
        ours = model(inputs_embeds=prepared.inputs_embeds, attention_mask=prepared.attention_mask).logits
        theirs = model(**ref).logits
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert prepared.visual_tokens == plan(adapter.reducer, prepared.grid, 4).total
    result = adapter.answer(frames, QUESTION, max_new_tokens=6)
    own = model.generate(**ref, max_new_tokens=6, do_sample=False)[0, ref["input_ids"].shape[1] :]
    assert result.generated_ids == own.tolist()


@pytest.mark.parametrize("name", LLAVA)
def test_llava_full_features_are_the_models_tokens_before_its_video_pooling(built, name):
    """features="full" = tower -> layer/strategy -> projector on the full grid, as the model computes it."""
    model, _ = built(name)
    frames = video(3)
    full = make_adapter(built, name, features="full", scorer=None)
    native = make_adapter(built, name, features="native", scorer=None)
    with torch.no_grad():
        tokens_full, tokens_native = full.encode_units(frames), native.encode_units(frames)
        g = model.config.vision_config.image_size // model.config.vision_config.patch_size
        assert tokens_full.shape[:3] == (3, g, g)
        if name == "llava_onevision":  # projector first, then the model's bilinear halving
            pooled = model.model.apply_pooling(tokens_full.flatten(1, 2))
        else:  # pooling first, then the projector: compare on the tower side
            selected = full._select(full._pixel_values(frames).flatten(0, 1))
            pooled = model.model.multi_modal_projector(model.model.vision_resampler(selected))
            torch.testing.assert_close(tokens_full.flatten(1, 2), model.model.multi_modal_projector(selected))
    torch.testing.assert_close(pooled.reshape(tokens_native.shape), tokens_native)


@pytest.mark.parametrize("name", QWEN)
def test_qwen_keep_all_reproduces_the_model_positions_logits_and_generation(built, name):
    model, processor = built(name)
    frames = video(4, 50, 80)  # 2 temporal patches of a 2 x 3 merged grid
    adapter = make_adapter(built, name, reducer=UniformConfig(num_frames=2), scorer=None)
    prepared = adapter.prepare(frames, QUESTION)
    ref = reference_inputs(processor, adapter, frames)
    assert prepared.grid == (2, 3)
    assert prepared.visual_tokens == 12 == plan(adapter.reducer, (2, 3), 2).total
    rope_kwargs = {"second_per_grid_ts": ref["second_per_grid_ts"]} if "second_per_grid_ts" in ref else {}
    positions, _ = model.model.get_rope_index(
        ref["input_ids"], ref["mm_token_type_ids"], video_grid_thw=ref["video_grid_thw"], **rope_kwargs
    )
    assert torch.equal(prepared.position_ids[1:], positions)
    with torch.no_grad():
        ours = model(
            inputs_embeds=prepared.inputs_embeds,
            attention_mask=prepared.attention_mask,
            position_ids=prepared.position_ids,
        ).logits
        theirs = model(**ref).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    # generation with the KV cache: positions of new tokens continue as the model's own
    result = adapter.answer(frames, QUESTION, max_new_tokens=6)
    own = model.generate(**ref, max_new_tokens=6, do_sample=False)[0, ref["input_ids"].shape[1] :]
    assert result.generated_ids == own.tolist()


def test_qwen2_5_temporal_positions_follow_the_frame_rate(built):
    """Qwen2.5-VL: unit u sits at int(u * tokens_per_second * 2 / fps); text resumes at the max + 1."""
    model, processor = built("qwen2_5_vl")
    frames = video(8, 50, 80)
    adapter = make_adapter(built, "qwen2_5_vl", reducer=UniformConfig(num_frames=4), scorer=None)
    prepared = adapter.prepare(frames, QUESTION, fps=2.0)
    ref = reference_inputs(processor, adapter, frames)
    positions, _ = model.model.get_rope_index(
        ref["input_ids"],
        ref["mm_token_type_ids"],
        video_grid_thw=ref["video_grid_thw"],
        second_per_grid_ts=torch.tensor([2 / 2.0]),
    )
    start, end = prepared.visual_span
    ours = prepared.position_ids[1:, 0]
    torch.testing.assert_close(ours[:, :end], positions[:, 0, :end])  # text before and the video
    assert ours[0, start:end].unique().tolist() == [start + 4 * u for u in range(4)]
    assert torch.all(ours[:, end] == ours[:, start:end].max() + 1)  # the reference rule (see module doc)


# ----------------------------------------------------------------------------------------------
# token counts equal plan()
# ----------------------------------------------------------------------------------------------

CONFIGS = [
    ReducerConfig(num_frames=6, slow_frames=2, middle_frames=2, fast_grid=(2, 2)),
    ReducerConfig(
        num_frames=5, slow_frames=1, middle_frames=3, fast_grid=(1, 2), pool_stride=3, roi_ratio=0.5
    ),
    ReducerConfig(num_frames=4, slow_frames=2, middle_frames=1, roi_mode="reencode", roi_ratio=0.6),
    ReducerConfig(num_frames=8, slow_frames=0, middle_frames=2, fast_grid=(3, 3), roi_ratio=1.0),
    UniformConfig(num_frames=3, pool_stride=2),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__ + str(c.num_frames))
@pytest.mark.parametrize("name", [*LLAVA, *QWEN])
def test_visual_embeddings_fed_equal_plan(built, name, config):
    adapter = make_adapter(built, name, reducer=config)
    frames = video(11, 45, 70, seed=5)
    prepared = adapter.prepare(frames, QUESTION)
    units = min(config.num_frames, -(-11 // adapter.frames_per_unit))
    expected = plan(config, prepared.grid, units)
    assert prepared.visual_tokens == expected.total == prepared.reduction.num_tokens
    start, end = prepared.visual_span
    fed = prepared.inputs_embeds[0, start:end]
    torch.testing.assert_close(fed, torch.cat([s.tokens for s in prepared.reduction.segments]))
    suffix = 1 if name == "llava_onevision" else 0
    prompt = adapter.prompt_ids(QUESTION)
    assert prepared.inputs_embeds.shape[1] == prompt.shape[0] - 1 + expected.total + suffix
    if prepared.position_ids is not None:
        assert prepared.position_ids.shape == (4, 1, prepared.inputs_embeds.shape[1])


def test_paper_configuration_on_the_papers_grid_feeds_2648_tokens():
    """LLaVA-NeXT-Video at 336 px / patch 14 (24 x 24, as LLaVA-1.6), 50 frames, paper defaults."""
    from transformers.models.llava_next_video.video_processing_llava_next_video import (
        LlavaNextVideoVideoProcessor,
    )

    model, processor = build_llava_next_video(image_size=336, patch_size=14, layers=1)
    processor.video_processor = LlavaNextVideoVideoProcessor(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}
    )
    adapter = LlavaVideoReducerAdapter(model, processor, scorer=clip_scorer(model, processor.tokenizer))
    prepared = adapter.prepare(video(60, 240, 320), QUESTION)
    assert prepared.grid == (24, 24)
    assert prepared.visible_region == pytest.approx((40, 0, 280, 240))  # the centre square kept
    assert prepared.visual_tokens == 2648 == plan(ReducerConfig(), (24, 24)).total
    assert [len(prepared.reduction.frames(p)) for p in ("slow", "middle", "fast")] == [3, 5, 50]


@pytest.mark.parametrize("name", ["llava_next_video", "qwen2_vl"])
def test_budget_picks_a_config_that_fits(built, name):
    adapter = make_adapter(built, name, reducer=ReducerConfig(num_frames=8), budget=40)
    prepared = adapter.prepare(video(16), QUESTION)
    assert prepared.visual_tokens <= 40
    assert prepared.visual_tokens == prepared.plan.total
    with pytest.raises(ValueError, match="smallest that works is 1"):
        adapter.prepare(video(16), QUESTION, budget=0)


# ----------------------------------------------------------------------------------------------
# end to end
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*LLAVA, *QWEN])
def test_answer_end_to_end_is_deterministic(built, name):
    config = ReducerConfig(num_frames=6, slow_frames=2, middle_frames=2, fast_grid=(2, 2), roi_ratio=0.5)
    adapter = make_adapter(built, name, reducer=config)
    frames = video(12, 60, 90, seed=1)
    first = adapter.answer(frames, QUESTION, max_new_tokens=5)
    second = adapter.answer(frames, QUESTION, max_new_tokens=5)
    assert isinstance(first.text, str)
    assert len(first.generated_ids) == 5
    assert (first.text, first.generated_ids, first.frames, first.boxes) == (
        second.text,
        second.generated_ids,
        second.frames,
        second.boxes,
    )
    units = 6
    per = adapter.frames_per_unit
    assert len(first.frames["slow"]) == 2 * per
    assert len(first.frames["middle"]) == 2 * per
    assert len(first.frames["fast"]) == units * per
    assert all(0 <= i < 12 for path in first.frames.values() for i in path)
    assert first.visual_tokens == plan(config, adapter.grid_for(frames.shape[1:3], units * per), units).total
    assert first.uniform_tokens > first.visual_tokens
    for x0, y0, x1, y1 in first.boxes.values():  # pixels, inside the 60 x 90 frame
        assert 0 <= x0 < x1 <= 90
        assert 0 <= y0 < y1 <= 60


@pytest.mark.parametrize("name", ["llava_next_video", "qwen2_vl"])
def test_slow_path_takes_the_scorers_top_frames(built, name):
    config = ReducerConfig(num_frames=6, slow_frames=2, middle_frames=0, fast_grid=(1, 1))
    adapter = make_adapter(built, name, reducer=config)
    frames = video(12, seed=3)
    prepared = adapter.prepare(frames, QUESTION)
    sampled = frames[[i for unit in prepared.unit_frames for i in unit]]
    frame_scores, _ = adapter.scorer.score(crop_frames(sampled, prepared.visible_region), QUESTION)
    per_unit = frame_scores.reshape(6, adapter.frames_per_unit).mean(1)
    assert prepared.reduction.frames("slow") == top_frames(per_unit, 2)


def test_visible_region_is_what_the_llava_processor_keeps():
    """Scores and boxes live on the centre crop the processor keeps: processing the cropped
    frames gives (up to resampling) the same pixels, a crop 10 px off does not."""
    from transformers.models.llava_next_video.video_processing_llava_next_video import (
        LlavaNextVideoVideoProcessor,
    )

    vp = LlavaNextVideoVideoProcessor(size={"shortest_edge": 112}, crop_size={"height": 112, "width": 112})
    frames = video(2, 120, 200)
    region = processor_visible_region(vp, (120, 200))
    assert region == pytest.approx((40, 0, 160, 120))

    def pixels(x):
        return vp(videos=[x], return_tensors="pt")["pixel_values_videos"]

    whole = pixels(frames)
    same = (whole - pixels(crop_frames(frames, region))).abs().mean()
    shifted = (whole - pixels(crop_frames(frames, (50.0, 0.0, 170.0, 120.0)))).abs().mean()
    assert same < shifted / 4


def test_scorer_shares_the_llava_vision_tower(built):
    model, processor = built("llava_next_video")
    scorer = clip_scorer(model, processor.tokenizer)
    tower = model.model.vision_tower.state_dict()
    for key, value in scorer.model.vision_model.state_dict().items():
        assert torch.equal(value, tower[key])


# ----------------------------------------------------------------------------------------------
# positions of reduced Qwen2-VL tokens
# ----------------------------------------------------------------------------------------------


def test_reduced_qwen_tokens_keep_their_original_positions(built):
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    model, processor = built("qwen2_vl")
    processor = copy.deepcopy(processor)  # a larger pixel budget: 112 x 168 frames -> 4 x 6 merged grid
    processor.video_processor = Qwen2VLVideoProcessor(
        size={"shortest_edge": 56 * 56, "longest_edge": 112 * 168}, cap_pixels_per_frame=False
    )
    config = ReducerConfig(num_frames=4, slow_frames=1, middle_frames=1, fast_grid=(1, 2), roi_ratio=0.5)
    adapter = Qwen2VLReducerAdapter(
        model, processor, reducer=config, scorer=clip_scorer(model, processor.tokenizer)
    )
    frames = video(8, 112, 168)
    prepared = adapter.prepare(frames, QUESTION)
    h, w = prepared.grid
    assert (h, w) == (4, 6)
    start, end = prepared.visual_span
    rows = prepared.position_ids[1:, 0].cpu()
    t, r, c = rows[:, start:end] - start
    offset = 0
    for segment in prepared.reduction.segments:
        n = segment.tokens.shape[0]
        assert torch.all(t[offset : offset + n] == segment.frame)
        cells = segment_cells(segment, (h, w), config)
        assert torch.equal(r[offset : offset + n], cells[:, 0])
        assert torch.equal(c[offset : offset + n], cells[:, 1])
        offset += n
    assert r.min() >= 0
    assert r.max() < h
    assert c.min() >= 0
    assert c.max() < w
    text_after = rows[:, end]
    assert torch.all(text_after == rows[:, start:end].max() + 1)
    assert torch.equal(rows[:, :start], torch.arange(start).expand(3, -1))


def test_segment_cells_of_pooled_and_cropped_tokens():
    """Each kept token's cell is where its value came from in the reducer's own pooling and crop."""
    from vidllm.reducer import reduce_free_video_llm

    grid = (4, 6)
    features = torch.arange(4 * 6, dtype=torch.float).reshape(1, 4, 6, 1)  # value = 6 * row + col
    scores = torch.zeros(1, 4, 6)
    scores[0, 2:, 4:] = 1
    config = ReducerConfig(num_frames=1, slow_frames=1, middle_frames=0, fast_grid=(2, 3), roi_ratio=0.25)
    slow, fast = reduce_free_video_llm(features, torch.ones(1), scores, config).segments
    cells = segment_cells(slow, grid, config)
    assert slow.grid == (2, 2)  # a 2 x 2 crop of the 4 x 3 pooled grid
    # a width-pooled token is the max of cells (r, 2c) and (r, 2c + 1), so its value is 6r + 2c + 1,
    # and it sits at the left of the two cells
    values = slow.tokens[:, 0].long()
    assert torch.equal(cells[:, 0], values // 6)
    assert torch.equal(cells[:, 1], values % 6 - 1)
    # the fast path pools 4 x 6 to 2 x 3: the lower middle of each 2 x 2 block
    assert segment_cells(fast, grid, config).tolist() == [[0, 0], [0, 2], [0, 4], [2, 0], [2, 2], [2, 4]]
    assert _centres(_spans_adaptive(12, 4), 12) == [1, 4, 7, 10]


# ----------------------------------------------------------------------------------------------
# loading and bad input
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llava_next_video", "qwen2_vl"])
def test_from_pretrained_loads_a_saved_model(built, name, tmp_path):
    model, processor = built(name)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    cls = LlavaVideoReducerAdapter if name in LLAVA else Qwen2VLReducerAdapter
    loaded = cls.from_pretrained(tmp_path, reducer=UniformConfig(num_frames=2))
    direct = cls(model, processor, reducer=UniformConfig(num_frames=2))
    frames = video(4)
    a, b = loaded.prepare(frames, QUESTION), direct.prepare(frames, QUESTION)
    torch.testing.assert_close(a.inputs_embeds, b.inputs_embeds)
    assert (
        loaded.answer(frames, QUESTION, max_new_tokens=3).text
        == direct.answer(frames, QUESTION, max_new_tokens=3).text
    )


def test_bad_input_is_refused_with_a_clear_message(built):
    adapter = make_adapter(built, "llava_next_video", reducer=ReducerConfig(num_frames=4))
    frames = video(4)
    with pytest.raises(ValueError, match="question is empty"):
        adapter.prepare(frames, "   ")
    with pytest.raises(ValueError, match="limit is"):
        adapter.prepare(frames, "why " * 1000)
    with pytest.raises(ValueError, match="uint8"):
        adapter.prepare(frames.astype(np.float32), QUESTION)
    with pytest.raises(ValueError, match="empty"):
        adapter.prepare(frames[:0], QUESTION)
    no_scorer = make_adapter(built, "llava_next_video", reducer=ReducerConfig(num_frames=4), scorer=None)
    with pytest.raises(ValueError, match="needs a relevance scorer"):
        no_scorer.prepare(frames, QUESTION)
    model, processor = built("qwen2_vl")
    with pytest.raises(TypeError, match="supports model types"):
        LlavaVideoReducerAdapter(model, processor)
