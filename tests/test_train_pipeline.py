"""vidllm.train end to end on the smoke preset: training lowers the loss, an interrupted run resumes
exactly, the training forward pass is the inference path, and the exported model loads and answers."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vidllm.testing.processes import run_process_group
from vidllm.train.loop import read_log
from vidllm.train.presets import get_preset
from vidllm.train.trainer import (
    VideoLLMForTraining,
    VideoStepBatch,
    as_video,
    build_video_llm,
    train,
    video_stage,
)

ROOT = Path(__file__).resolve().parents[1]


def _final_state(run_dir: Path, stage: str) -> dict[str, torch.Tensor]:
    checkpoints = sorted((run_dir / stage / "checkpoints").glob("step_*"))
    return load_file(str(checkpoints[-1] / "model.safetensors"))


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The smoke preset trained once, uninterrupted (validation included)."""
    out = tmp_path_factory.mktemp("smoke") / "run"
    result = train(get_preset("smoke"), out, progress=False)
    assert result.status == "done"
    return result


def test_smoke_training_lowers_the_loss(smoke_run):
    for stage in ("scorer", "video"):
        log = read_log(smoke_run.output_dir / stage / "log.csv")
        assert log["step"][-1] == get_preset("smoke").__getattribute__(stage).steps
        assert log["loss"][-1] < log["loss"][0], (stage, log["loss"])
    assert set(smoke_run.stages) == {"scorer", "video", "lora"}
    assert all(r.status == "done" for r in smoke_run.stages.values())


def test_interrupted_run_resumes_exactly(smoke_run, tmp_path):
    """Stopped inside every stage (with a checkpoint, as a SIGTERM or the time limit stops it) and
    started again: the same weights, optimiser-driven to the same values, as the uninterrupted run."""
    preset = get_preset("smoke")
    out = tmp_path / "run"
    for stop in ({"scorer": 3}, {"video": 5}, {"lora": 1}):
        result = train(preset, out, stop_at=stop, progress=False, run_validation=False)
        assert result.status == "stopped"
        ((stage, step),) = stop.items()
        assert result.stages[stage].step == step
    assert train(preset, out, progress=False, run_validation=False).status == "done"
    for stage in ("scorer", "video", "lora"):
        _assert_same_state(_final_state(smoke_run.output_dir, stage), _final_state(out, stage))
    logged = read_log(out / "video" / "log.csv")
    reference = read_log(smoke_run.output_dir / "video" / "log.csv")
    assert logged["step"] == reference["step"]
    assert logged["loss"] == reference["loss"]


def test_finished_run_is_not_trained_again(smoke_run):
    result = train(get_preset("smoke"), smoke_run.output_dir, progress=False, run_validation=False)
    assert result.status == "done"
    assert all(r.elapsed == smoke_run.stages[name].elapsed for name, r in result.stages.items())


def test_exported_model_loads_and_answers(smoke_run, tmp_path):
    import vidllm
    from vidllm.data.synthetic import QuestionSet, render
    from vidllm.data.synthetic.writer import encode_mp4

    model_dir = smoke_run.model_dir
    for name in ("vidllm_config.json", "vision.safetensors", "training_config.json", "loss_curve.png"):
        assert (model_dir / name).is_file(), name
    size = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
    assert size < 20e6
    record = json.loads((model_dir / "training_config.json").read_text())
    assert record["preset"]["name"] == "smoke"
    assert record["validation"]["questions"] > 0
    assert record["machine"]["cpu"]["isa"] == torch.backends.cpu.get_cpu_capability()
    config = json.loads((model_dir / "vidllm_config.json").read_text())
    assert config["tower"]["frozen"] is True
    assert config["scorer"]["kind"] == "dual_encoder"

    qset = QuestionSet.build("validation", 1, 2)
    scene, question = qset.scenes[0], qset.questions[0]
    video = tmp_path / "clip.mp4"
    encode_mp4(render(scene, 50, (96, 96)), video, fps=10.0)
    model = vidllm.load(str(model_dir), device="cpu")
    assert not any(p.requires_grad for p in model.tower.parameters())
    for reducer in ("free-video-llm", "uniform"):
        answer = model.answer(str(video), question.question, reducer=reducer)
        assert isinstance(answer.text, str)
        assert answer.visual_tokens > 0
        assert answer.reducer["reducer"] == reducer


@pytest.mark.parametrize("reducer", ["free-video-llm", "uniform"])
def test_training_forward_is_the_inference_path(smoke_run, reducer):
    """The embeddings the LM is trained on are those ``VideoLLM.prepare`` feeds it at inference."""
    from vidllm.model import VideoLLM
    from vidllm.train.data import video_item

    model = VideoLLM.from_pretrained(smoke_run.model_dir)
    wrapper = VideoLLMForTraining(model).eval()
    num_frames = model.config.reducer_config().num_frames
    items = [video_item(i, seed=0, num_frames=num_frames, questions=2, mc_share=0.5) for i in (11, 12)]
    layout = model.resolve_reducer(reducer, None)
    batch = VideoStepBatch(items, layout, reducer, [(0, 0), (1, 0), (1, 1)])
    with torch.no_grad():
        trained = wrapper.prompt_embeds(batch)
    for (v, q), embeds in trained.items():
        item = items[v]
        stamps = np.asarray(item.timestamps)
        video = as_video(item.frames, stamps, num_frames)
        reference = model.prepare(video, item.questions[q].prompt, reducer=reducer).embeds
        assert embeds.shape == reference.shape
        torch.testing.assert_close(embeds, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("ffn_type", ["dense", "versatile", "parameternet"])
def test_video_stage_trains_every_ffn_type(ffn_type, tmp_path):
    """Two optimiser steps of stage 2 for each LM FFN variant: finite loss, weights move."""
    from vidllm.train.loop import run_stage
    from vidllm.train.scorer_training import build_dual_encoder
    from vidllm.train.tokenizer import train_tokenizer, world_corpus

    preset = get_preset("smoke", {"video.steps": 2, "log_every": 1})
    preset.model.lm = {**preset.model.lm, "ffn_type": ffn_type, "num_parameternet_experts": 2}
    tokenizer = train_tokenizer(world_corpus(num_items=20), vocab_size=300)
    torch.manual_seed(0)
    model = build_video_llm(preset, tokenizer, build_dual_encoder(preset, tokenizer))
    before = {k: v.clone() for k, v in model.lm.state_dict().items()}
    wrapper = VideoLLMForTraining(model)
    result = run_stage(video_stage(preset, wrapper), tmp_path / "video", progress=False, log_every=1)
    assert result.status == "done"
    assert result.step == 2
    log = read_log(tmp_path / "video" / "log.csv")
    assert all(np.isfinite(log["loss"]))
    moved = [k for k, v in model.lm.state_dict().items() if not torch.equal(v, before[k])]
    assert any("mlp" in k for k in moved)
    assert any("self_attn" in k for k in moved)


def test_reducer_mix_entries_set_reducer_fields_per_layout():
    """A ``reducer_mix`` entry's keys beyond reducer/budget/weight set that layout's ReducerConfig
    fields (the crop placement trained on, for one), and are refused where they mean nothing."""
    from vidllm.train.scorer_training import build_dual_encoder
    from vidllm.train.tokenizer import train_tokenizer, world_corpus
    from vidllm.train.trainer import make_video_batch_fn

    preset = get_preset("smoke")
    tokenizer = train_tokenizer(world_corpus(num_items=20), vocab_size=300)
    model = build_video_llm(preset, tokenizer, build_dual_encoder(preset, tokenizer))
    default = model.resolve_reducer("free-video-llm", None)
    mix = [{"reducer": "free-video-llm", "budget": None, "roi_center": "mean", "weight": 1.0}]
    batch = make_video_batch_fn(model, preset, preset.video, mix=mix, stage_seed=2)(0, 0, 1)
    assert batch.layout == replace(default, roi_center="mean")
    assert batch.layout_name == "free-video-llm@default[roi_center=mean]"
    for bad, message in [
        ({"reducer": "uniform", "budget": 64, "roi_center": "mean"}, "only free-video-llm"),
        ({"reducer": "free-video-llm", "budget": None, "roi_centre": "mean"}, "not ReducerConfig fields"),
        ({"reducer": "free-video-llm", "budget": None, "roi_center": "middle"}, "roi_center must be one of"),
    ]:
        with pytest.raises(ValueError, match=message):
            make_video_batch_fn(model, preset, preset.video, mix=[bad], stage_seed=2)


def test_cli_lists_presets_and_rejects_unknown_ones(tmp_path, capsys):
    from vidllm.cli import main

    assert main(["train", "--list"]) == 0
    assert main(["train", "--preset", "no-such-preset"]) == 2
    # a reducer_mix entry with a wrong reducer setting is refused before anything trains
    bad = '[{"reducer": "free-video-llm", "budget": null, "roi_center": "middle"}]'
    assert main(["train", "--set", f"video.reducer_mix={bad}", "--output-dir", str(tmp_path / "run")]) == 2
    assert "roi_center must be one of" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert (
        main(["train", "--set", 'video.template_weights={"frist": 2}', "--output-dir", str(tmp_path / "run")])
        == 2
    )
    assert "unknown templates ['frist']" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert (
        main(["train", "--set", 'lora.template_weights={"frist": 2}', "--output-dir", str(tmp_path / "run")])
        == 2
    )
    assert "unknown templates ['frist']" in capsys.readouterr().err
    assert main(["train", "--set", f"lora.reducer_mix={bad}", "--output-dir", str(tmp_path / "run")]) == 2
    assert "roi_center must be one of" in capsys.readouterr().err
    assert main(["train", "--set", "video.attribute_count=all", "--output-dir", str(tmp_path / "run")]) == 2
    assert "video.attribute_count must be one of" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_lora_stage_draws_its_own_template_weights():
    """A LoRA stage's ``template_weights`` set its targeted questions' templates; None leaves
    them to the video stage's."""
    from vidllm.data.synthetic import TEMPLATES
    from vidllm.train.scorer_training import build_dual_encoder
    from vidllm.train.tokenizer import train_tokenizer, world_corpus
    from vidllm.train.trainer import make_video_batch_fn

    preset = get_preset("smoke")
    tokenizer = train_tokenizer(world_corpus(num_items=20), vocab_size=300)
    model = build_video_llm(preset, tokenizer, build_dual_encoder(preset, tokenizer))
    only = lambda template: {t: 0 for t in TEMPLATES if t != template}

    def targeted(stage) -> set[str]:
        batches = [make_video_batch_fn(model, preset, stage, stage_seed=3)(s, 0, 1)
                   for s in range(3)]  # fmt: skip
        return {item.questions[0].question.template for b in batches for item in b.videos}

    preset.video.template_weights = only("shape")
    assert preset.lora.template_weights is None
    assert targeted(preset.lora) == {"shape"}
    preset.lora.template_weights = only("count")
    assert targeted(preset.lora) == {"count"}
    assert targeted(preset.video) == {"shape"}


def test_lora_stage_trains_on_its_own_reducer_mix():
    """A LoRA stage's ``reducer_mix`` sets the layouts it trains on; None leaves them to the
    video stage's."""
    from vidllm.train.scorer_training import build_dual_encoder
    from vidllm.train.tokenizer import train_tokenizer, world_corpus
    from vidllm.train.trainer import VideoLLMForTraining, lora_stage

    tokenizer = train_tokenizer(world_corpus(num_items=20), vocab_size=300)

    def layouts(preset) -> set[str]:
        model = build_video_llm(preset, tokenizer, build_dual_encoder(preset, tokenizer))
        stage = lora_stage(preset, VideoLLMForTraining(model))
        return {stage.batch_fn(s, 0, 1).layout_name for s in range(8)}

    preset = get_preset("smoke")
    assert preset.lora.reducer_mix is None
    assert layouts(preset) == {"free-video-llm@default", "uniform@32"}  # the video stage's
    preset.lora.reducer_mix = [{"reducer": "free-video-llm", "budget": None, "roi_center": "mean"}]
    assert layouts(preset) == {"free-video-llm@default[roi_center=mean]"}


@pytest.mark.slow
def test_sigkill_during_training_resumes_to_the_same_model(smoke_run, tmp_path):
    """``vidllm train`` killed with SIGKILL mid-stage and started again ends where the
    uninterrupted run ended (it resumes from the last periodic checkpoint)."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "vidllm.cli", "train", "--preset", "smoke", "--output-dir", str(out),
               "--no-validation", "--no-progress"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if list((out / "video" / "checkpoints").glob("step_*")):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    for stage in ("scorer", "video", "lora"):
        _assert_same_state(_final_state(smoke_run.output_dir, stage), _final_state(out, stage))


@pytest.mark.slow
def test_two_processes_train_with_distributed_data_parallel(tmp_path):
    """``torchrun --standalone --nproc_per_node 2``: two CPU processes (gloo), one model, an RNG
    state each. ``--standalone`` rendezvouses on a free port (not the fixed 29500 that another
    launcher on the machine may hold)."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "vidllm.cli", "train", "--preset", "smoke", "--output-dir", str(out), "--no-progress"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = run_process_group(command, cwd=ROOT, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    last = sorted((out / "video" / "checkpoints").glob("step_*"))[-1]
    assert (last / "rng_0.safetensors").is_file()
    assert (last / "rng_1.safetensors").is_file()
    assert done.stdout.count("model:") == 1  # one report, from the main process
    assert (out / "model" / "vision.safetensors").is_file()


@pytest.mark.parametrize("new_objects", [False, True])
def test_relevance_targets_mark_the_subjects_tokens(smoke_run, new_objects):
    """The auxiliary relevance and attribute losses: visual tokens are found in the LM input,
    the relevance targets are positive exactly on tokens whose region shows a subject of the
    question, and the attribute targets are one row per visual token, one column per head
    output group (with or without the new-object flag)."""
    from vidllm.model import VideoLLM
    from vidllm.train.data import attribute_columns, video_item

    model = VideoLLM.from_pretrained(smoke_run.model_dir)
    wrapper = VideoLLMForTraining(
        model,
        relevance_weight=1.0,
        relevance_layer=1,
        attribute_weight=1.0,
        attribute_layer=1,
        attribute_new_objects=new_objects,
    ).eval()
    columns = attribute_columns(new_objects)
    assert wrapper.attribute_head.out_features == sum(columns.values())
    num_frames = model.config.reducer_config().num_frames
    item = video_item(21, seed=0, num_frames=num_frames, questions=3, mc_share=0.0)
    batch = VideoStepBatch([item], model.resolve_reducer("uniform", None), "uniform", [(0, 0), (0, 1)])
    with torch.no_grad():
        layouts = wrapper.layouts(batch)
        for embeds, positions, reduction in layouts.values():
            visual = model.project(reduction, num_frames)
            torch.testing.assert_close(embeds[positions], visual)
        loss, metrics = wrapper(batch)
    assert torch.isfinite(loss)
    assert 0.0 <= metrics["relevance_acc"] <= 1.0
    assert metrics["attribute_loss"] > 0
    for _, positions, reduction in layouts.values():  # one attribute row per visual token
        table = item.object_attributes(reduction.segments, new_objects=new_objects)
        assert table.shape == (len(positions), len(columns))


@pytest.mark.parametrize("train_head", [True, False])
def test_video_stage_optimises_every_trainable_parameter(smoke_run, train_head):
    """The relevance head lives on the training wrapper, not on the VideoLLM: it trains with the
    LM, or (``train_relevance_head=False``) is a fixed probe that no optimiser group holds."""
    from vidllm.model import VideoLLM

    model = VideoLLM.from_pretrained(smoke_run.model_dir)
    wrapper = VideoLLMForTraining(
        model, relevance_weight=1.0, relevance_layer=1, train_relevance_head=train_head, attribute_weight=1.0
    )
    stage = video_stage(get_preset("smoke"), wrapper)
    optimised = {id(p) for group in stage.param_groups for p in group["params"]}
    trainable = {id(p) for p in wrapper.parameters() if p.requires_grad}
    assert optimised == trainable
    head = {id(p) for p in wrapper.relevance_head.parameters()}
    assert (head <= optimised) if train_head else not (head & optimised)
    assert {id(p) for p in wrapper.attribute_head.parameters()} <= optimised
    assert any(id(p) in optimised for p in model.lm.parameters())


def test_question_loss_is_the_next_token_loss_of_the_prompt_after_the_video(smoke_run):
    """The auxiliary question loss scores exactly the prompt's text after the video: the last
    rows of each LM input are that text's embeddings, and the loss is their cross-entropy."""
    from vidllm.model import VideoLLM
    from vidllm.train.data import video_item

    model = VideoLLM.from_pretrained(smoke_run.model_dir)
    wrapper = VideoLLMForTraining(model, question_weight=1.0).eval()
    num_frames = model.config.reducer_config().num_frames
    item = video_item(22, seed=0, num_frames=num_frames, questions=2, mc_share=0.0)
    batch = VideoStepBatch([item], model.resolve_reducer("free-video-llm", None), "default", [(0, 0), (0, 1)])
    embed = model.lm.get_input_embeddings()
    with torch.no_grad():
        layouts = wrapper.layouts(batch)
        expected = []
        for v, q in batch.selected:
            embeds = layouts[v, q][0]
            tail = model.prompt_text_ids(item.questions[q].prompt)[1]
            assert model.tokenizer.decode(tail).strip().startswith("Question:")
            torch.testing.assert_close(embeds[-len(tail) :], embed(torch.tensor(tail)))
            logits = model.lm(inputs_embeds=embeds[None]).logits[0]
            expected.append((logits[-len(tail) - 1 : -1], torch.tensor(tail)))
        _, metrics = wrapper(batch)
    predicted = torch.cat([p for p, _ in expected]).float()
    targets = torch.cat([t for _, t in expected])
    reference = torch.nn.functional.cross_entropy(predicted, targets)
    assert metrics["question_loss"] == pytest.approx(float(reference), rel=1e-3)


def test_float32_attention_under_bf16_autocast(tmp_path, monkeypatch):
    """``Preset.fp32_attention``: the LM's SDPA gets float32 inputs inside bf16 autocast while the
    video and LoRA stages train (bfloat16 without it), and the exported model names its usual
    attention again."""
    from vidllm.model import VideoLLM

    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(*args, **kwargs):
        out = sdpa(*args, **kwargs)
        seen.append(out.dtype)  # the dtype it computed in (autocast casts its inputs)
        return out

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_sdpa)
    dtypes = {}
    for fp32_attention in (True, False):
        preset = get_preset("smoke", {"bf16": True, "fp32_attention": fp32_attention})
        out = tmp_path / f"fp32_attention={fp32_attention}"
        train(preset, out, progress=False, run_validation=False, stop_at={"video": 1})
        seen.clear()  # the scorer stage is done: from here on only the LM runs attention
        result = train(preset, out, progress=False, run_validation=False)
        assert set(result.stages) == {"scorer", "video", "lora"}
        assert all(r.status == "done" for r in result.stages.values())
        dtypes[fp32_attention] = set(seen)
        model = VideoLLM.from_pretrained(result.model_dir)
        assert model.lm.config._attn_implementation == "sdpa"
    assert dtypes == {True: {torch.float32}, False: {torch.bfloat16}}


@pytest.mark.parametrize("template", ["color", "shape", "count", "first"])
def test_object_questions_are_posed_as_the_world_poses_them(template):
    """The made-up sequences' questions (vidllm.train.object_tokens): the world's template text,
    colours distinct, every object on ``tokens_per_object`` rows, a colour question about a shape
    the scene holds once, count answers over 0-4, and a "first" question about two of the scene's
    objects whose first rows are the world's ``first_gap`` apart, answered by the earlier."""
    from vidllm.data.synthetic import COLORS, SHAPES, TEMPLATES, WorldConfig
    from vidllm.train.object_tokens import MAX_OBJECTS, draw_sequence

    rng = np.random.default_rng(0)
    answers = set()
    for _ in range(300):
        objects, rows, question, answer = draw_sequence(rng, template, 96, [2, 12])
        assert 1 <= len(objects) <= MAX_OBJECTS
        assert len({c for c, _ in objects}) == len(objects)
        shown = torch.bincount(rows[rows >= 0], minlength=len(objects))
        assert len(shown) == len(objects)
        assert bool(((shown >= 2) & (shown <= 12)).all())
        names = [(COLORS[c], SHAPES[s]) for c, s in objects]
        if template == "count":
            shape = next(s for s in SHAPES if question == TEMPLATES["count"].format(shape=s))
            assert answer == str(sum(s == shape for _, s in names))
        elif template == "color":
            shape = next(s for s in SHAPES if question == TEMPLATES["color"].format(shape=s))
            assert [c for c, s in names if s == shape] == [answer]
        elif template == "shape":
            color = next(c for c in COLORS if question == TEMPLATES["shape"].format(color=c))
            assert [s for c, s in names if c == color] == [answer]
        else:
            first = {f"{c} {s}": int((rows == k).nonzero()[0]) for k, (c, s) in enumerate(names)}
            a, b = next(
                (x, y) for x in first for y in first if question == TEMPLATES["first"].format(a=x, b=y)
            )
            assert answer in (a, b)
            assert a != b
            late = b if answer == a else a
            assert first[late] - first[answer] >= WorldConfig().first_gap * 96
        answers.add(answer)
    if template == "count":
        assert answers == {str(k) for k in range(MAX_OBJECTS + 1)}
    if template == "first":
        assert len(answers) > 20


def test_object_batches_lay_out_the_prompt_with_each_objects_rows():
    """Each sequence is the video LLM's prompt around made-up visual rows: the question before and
    after the video markers, every object on ``tokens_per_object`` rows, the answer as target; a
    step's batch is a pure function of the step and each process draws its own."""
    from vidllm.train.object_tokens import ObjectTokenLM, make_object_batch_fn
    from vidllm.train.scorer_training import build_dual_encoder
    from vidllm.train.tokenizer import train_tokenizer, world_corpus

    preset = get_preset("smoke", {"objects.batch": 6, "objects.visual_tokens": 60})
    tokenizer = train_tokenizer(world_corpus(num_items=20), vocab_size=300)
    model = build_video_llm(preset, tokenizer, build_dual_encoder(preset, tokenizer))
    batch_fn = make_object_batch_fn(model, preset.objects, seed=0, stage_seed=4)
    batch = batch_fn(3, 0, 1)
    again = batch_fn(3, 0, 1)
    assert batch.before == again.before
    assert torch.equal(batch.rows, again.rows)
    assert torch.equal(batch.noise, again.noise)
    assert not torch.equal(batch_fn(3, 1, 2).rows, batch_fn(3, 0, 2).rows)
    assert len(batch_fn(3, 1, 2).objects) == 3
    low, high = preset.objects.tokens_per_object
    for i, objects in enumerate(batch.objects):
        shown = torch.bincount(batch.rows[i][batch.rows[i] >= 0], minlength=len(objects))
        assert len(shown) == len(objects)
        assert bool(((shown >= low) & (shown <= high)).all())
        text_ids, tail = model.prompt_text_ids(batch.questions[i])
        assert batch.before[i] == [*text_ids, *(model.marker_ids[k] for k in ("start", "slow", "frame"))]
        assert batch.after[i] == [model.marker_ids["end"], *tail]
        assert batch.targets[i][-1] == tokenizer.eos_token_id
        assert tokenizer.decode(batch.targets[i][:-1]).strip() == batch.answers[i]
    loss, metrics = ObjectTokenLM(model, preset.objects.noise)(batch)
    loss.backward()
    assert metrics["questions"] == 6
    assert math.isfinite(float(loss))
    assert model.lm.get_input_embeddings().weight.grad.abs().sum() > 0


def test_object_stage_trains_the_lm_before_the_video_stage_and_resumes(tmp_path):
    """``objects.steps > 0``: the LM trains on made-up object tokens before the video stage (its
    loss falls), an interrupted object stage resumes to the same weights, and the video stage
    after it draws the batches it draws without it."""
    overrides = {"objects.steps": 8, "objects.batch": 8, "objects.warmup": 0, "lora.steps": 0, "log_every": 1}
    preset = get_preset("smoke", overrides)
    whole = train(preset, tmp_path / "whole", progress=False, run_validation=False)
    assert set(whole.stages) == {"scorer", "objects", "video"}
    log = read_log(tmp_path / "whole" / "objects" / "log.csv")
    assert log["step"][-1] == 8
    assert log["questions"] == [8] * 8
    assert np.mean(log["lm_loss"][-3:]) < np.mean(log["lm_loss"][:3])
    out = tmp_path / "cut"
    assert (
        train(preset, out, stop_at={"objects": 3}, progress=False, run_validation=False).status == "stopped"
    )
    assert train(preset, out, progress=False, run_validation=False).status == "done"
    for stage in ("objects", "video"):
        _assert_same_state(_final_state(tmp_path / "whole", stage), _final_state(out, stage))
    plain = train(get_preset("smoke", {"lora.steps": 0, "log_every": 1}), tmp_path / "plain",
                  progress=False, run_validation=False)  # fmt: skip
    layouts = read_log(plain.output_dir / "video" / "log.csv")["layout"]
    assert read_log(tmp_path / "whole" / "video" / "log.csv")["layout"] == layouts


def test_interleaved_object_sequences_train_beside_the_videos_and_share_the_attribute_head(tmp_path):
    """``objects.interleave``: each video-stage step also trains on made-up sequences (their answer
    loss, and their rows' colour, shape and same-shape count through the video stage's attribute
    head), drawn from their own stream so the videos and layouts are the run's without them."""
    from vidllm.data.synthetic import COLORS, SHAPES
    from vidllm.model import VideoLLM
    from vidllm.train.data import OBJECT_ATTRIBUTES
    from vidllm.train.object_tokens import make_object_batch_fn, object_row_attributes
    from vidllm.train.trainer import make_video_batch_fn

    common = {"video.attribute_loss_weight": 0.25, "lora.steps": 0, "log_every": 1}
    preset = get_preset("smoke", {**common, "objects.interleave": 4})
    plain = train(get_preset("smoke", common), tmp_path / "plain", progress=False, run_validation=False)
    result = train(preset, tmp_path / "mixed", progress=False, run_validation=False)
    log = read_log(tmp_path / "mixed" / "video" / "log.csv")
    assert all(math.isfinite(a) for a in log["object_acc"])
    assert log["layout"] == read_log(plain.output_dir / "video" / "log.csv")["layout"]
    assert result.stages["video"].status == "done"

    model = VideoLLM.from_pretrained(result.model_dir)
    wrapper = VideoLLMForTraining.from_spec(model, preset.video, preset.objects)
    objects_fn = make_object_batch_fn(model, replace(preset.objects, batch=3), seed=0, stage_seed=5)
    batch = make_video_batch_fn(model, preset, preset.video, stage_seed=2, objects_fn=objects_fn)(0, 0, 1)
    assert len(batch.objects.objects) == 3
    target = object_row_attributes(batch.objects, len(OBJECT_ATTRIBUTES), count=True).view(3, -1, 5)
    for i, objects in enumerate(batch.objects.objects):
        for k, (color, shape) in enumerate(objects):
            rows = target[i, batch.objects.rows[i] == k]
            same = sum(s == shape for _, s in objects) - 1
            assert rows.tolist() == [[color, shape, -100, -100, same]] * len(rows)
        none = target[i, batch.objects.rows[i] < 0]
        assert none.tolist() == [[len(COLORS), len(SHAPES), -100, -100, -100]] * len(none)
    metrics = {}
    loss = wrapper._object_loss(batch.objects, metrics)
    # answer and attribute terms each an average: a fresh model's loss is about their classes' logs
    scale = math.log(len(model.tokenizer)) + sum(math.log(n) for n in OBJECT_ATTRIBUTES.values())
    assert float(loss) < preset.objects.interleave_weight * 2 * scale
    loss.backward()
    assert math.isfinite(metrics["object_acc"])
    assert wrapper.attribute_head.weight.grad.abs().sum() > 0
