"""Stage 2 (and 3): train the video LLM end to end, then export the model ``vidllm.load`` reads.

The pipeline of ``vidllm train --preset NAME`` (:func:`train`), every stage resumable:

0. the tokenizer (:mod:`vidllm.train.tokenizer`), saved first so a resumed run reuses it;
1. the relevance scorer (:mod:`vidllm.train.scorer_training`);
1b. optionally the LM alone on made-up object tokens (:mod:`vidllm.train.object_tokens`;
   the default recipe instead puts such sequences beside every video-stage step);
2. the video LLM: vision tower (initialised from the scorer's image backbone, trainable),
   projector and LM, trained on the answer tokens only. The forward pass is the inference path
   of :meth:`vidllm.model.VideoLLM.prepare` with gradients: the same tower, scorer, reducer
   functions and prompt layout (``VideoLLM.layout``), so what is trained is what answers. Each
   step draws one reducer layout from the preset's mix (Free Video-LLM at several budgets and
   uniform sampling from one frame to all of them), so the model reads every layout it will be
   given; the Free Video-LLM crops of ``roi_mode="reencode"`` are encoded in one batch;
3. optionally LoRA on the LM (PEFT, :func:`vidllm.lm.apply_lora`), merged into the weights;
4. export: ``VideoLLM.save_pretrained`` (safetensors), ``training_config.json`` and
   ``loss_curve.png`` beside it, and a validation accuracy with both reducers.

LLaVA trains its projector and LM on answer tokens with the prompt masked the same way (Liu et
al., "Visual Instruction Tuning", 2023, Sec. 4); here nothing is pretrained, so every part learns.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import shutil
import string
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from vidllm._system import cpu_info
from vidllm.reducer import (
    ReducerConfig,
    UniformConfig,
    plan,
    reduce_free_video_llm,
    reduce_uniform,
    uniform_frames,
)
from vidllm.train.data import WITH_NONE, TrainVideo, attribute_columns, video_batch
from vidllm.train.loop import Stage, StageResult, decay_groups, plot_loss_curves, run_stage
from vidllm.train.presets import (
    MIX_KEYS,
    LoRAStageSpec,
    ObjectStageSpec,
    Preset,
    VideoStageSpec,
    mix_settings,
)

if TYPE_CHECKING:
    from vidllm.data.synthetic import Question, Scene
    from vidllm.train.object_tokens import ObjectStepBatch

logger = logging.getLogger(__name__)

TOKENIZER_DIR = "tokenizer"
MODEL_DIR = "model"
CONFIG_FILE = "training_config.json"
CURVE_FILE = "loss_curve.png"
VALIDATION_FILE = "validation.json"
VIDEO_METRICS = (
    "lm_loss",
    "answer_acc",
    "question_loss",
    "relevance_loss",
    "relevance_acc",
    "attribute_loss",
    "attribute_acc",
    "object_acc",
    "object_count_acc",
    "questions",
    "seq_len",
    "layout",
)


# ----------------------------------------------------------------------------------------------
# building the model
# ----------------------------------------------------------------------------------------------


def gumbel_decay(steps: int, start: float = 5.0, end: float = 0.1) -> float:
    """Per-step factor that anneals VersatileFFN's Gumbel temperature from ``start`` to ``end``
    over ``steps`` (the official schedule reaches 0.1 after ~24k steps; our runs are shorter)."""
    return math.exp(math.log(end / start) / max(1, steps))


def build_video_llm(preset: Preset, tokenizer, dual_encoder, *, train_tower: bool = True):
    """The untrained video LLM of ``preset`` around a trained dual encoder (the frozen scorer)."""
    from vidllm.lm import VidLMConfig, VidLMForCausalLM
    from vidllm.model import VideoLLM, VideoLLMConfig
    from vidllm.towers import BackboneTower
    from vidllm.train.dual_encoder import make_scorer

    spec = preset.model
    tower = BackboneTower(
        spec.tower.backbone,
        image_size=spec.tower.image_size,
        model_kwargs={"num_classes": 0, **spec.tower.backbone_kwargs},
        frozen=not train_tower,
        max_batch_size=4096,
    )
    if preset.video.init_tower_from_scorer:
        tower.model.load_state_dict(dual_encoder.image_encoder.backbone.state_dict())
    prefixes = preset.video.tower_trainable
    if train_tower and prefixes is not None:
        for name, p in tower.model.named_parameters():
            p.requires_grad_(name.startswith(tuple(prefixes)))
        if not any(p.requires_grad for p in tower.parameters()):
            raise ValueError(
                f"video.tower_trainable {prefixes} matches no parameter of {spec.tower.backbone}"
            )
    scorer = make_scorer(dual_encoder, tokenizer, frozen=True)
    lm_fields = dict(spec.lm)
    lm_fields.setdefault("gumbel_temperature_decay", gumbel_decay(preset.video.steps))
    lm = VidLMForCausalLM(
        VidLMConfig(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **lm_fields,
        )
    )
    config = VideoLLMConfig(
        tower={**tower.to_spec(), "frozen": True, "max_batch_size": 64},
        scorer=scorer.to_spec(),
        reducer=dict(spec.reducer),
        projector_hidden=spec.projector_hidden,
        visual_positions=spec.visual_positions,
        relevance_inputs=spec.relevance_inputs,
        motion_inputs=spec.motion_inputs,
        max_new_tokens=spec.max_new_tokens,
        prompt_template=spec.prompt_template,
    )
    return VideoLLM(config, tower, lm, tokenizer, scorer)


# ----------------------------------------------------------------------------------------------
# the training forward pass
# ----------------------------------------------------------------------------------------------


@dataclass
class VideoStepBatch:
    videos: list[TrainVideo]
    layout: ReducerConfig | UniformConfig
    layout_name: str
    selected: list[tuple[int, int]]  # (video, question) pairs trained on this step
    objects: ObjectStepBatch | None = None  # made-up sequences beside them (objects.interleave)


def _half_each(positive: torch.Tensor, total: int) -> torch.Tensor:
    """Per-token loss weights that give the ``positive`` tokens half of the loss and the other
    ``total - positive.sum()`` the other half (all of it to one side when the other is empty)."""
    n = int(positive.sum())
    return torch.where(positive, 0.5 / max(n, 1), 0.5 / max(total - n, 1)) * (2.0 if n in (0, total) else 1.0)


def pad_answer_batch(prompts: list[torch.Tensor], targets: list[list[int]], embed: nn.Embedding):
    """Right-padded LM inputs of prompts ``(L_i, H)`` each followed by its answer ids:
    ``(inputs (B, L, H), attention mask (B, L), labels (B, L))``, labels -100 but on the answers."""
    sequences, labels = [], []
    for prompt, target in zip(prompts, targets):
        ids = torch.tensor(target, device=prompt.device)
        sequences.append(torch.cat([prompt, embed(ids).to(prompt.dtype)]))
        labels.append(torch.cat([torch.full((prompt.shape[0],), -100, device=prompt.device), ids]))
    length = max(s.shape[0] for s in sequences)
    inputs = sequences[0].new_zeros(len(sequences), length, sequences[0].shape[1])
    mask = torch.zeros(len(sequences), length, dtype=torch.long, device=inputs.device)
    label_batch = torch.full((len(sequences), length), -100, dtype=torch.long, device=inputs.device)
    for i, (s, lab) in enumerate(zip(sequences, labels)):
        inputs[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = 1
        label_batch[i, : s.shape[0]] = lab
    return inputs, mask, label_batch


@torch.no_grad()
def answer_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(B,)`` bool: every answer token of the sequence predicted right (greedy, teacher-forced)."""
    predicted = logits[:, :-1].argmax(-1)
    target = labels[:, 1:]
    return ((predicted == target) | (target == -100)).all(dim=1)


class VideoLLMForTraining(nn.Module):
    """A :class:`vidllm.model.VideoLLM` with a training ``forward``: the loss of a batch.

    ``forward`` is what distributed data parallel wraps, so every trained parameter is reached
    from it. The scorer stays frozen (it was trained in stage 1); the tower's batch-norm layers
    keep their statistics when ``freeze_tower_bn`` (frames and RoI crops come in batches of very
    different make-up, and inference uses the running statistics anyway).
    """

    @classmethod
    def from_spec(
        cls, model, spec: VideoStageSpec, objects: ObjectStageSpec | None = None
    ) -> VideoLLMForTraining:
        """The wrapper a video stage of ``spec`` trains (its auxiliary losses and their layers),
        with ``objects.interleave`` made-up sequences in each step."""
        interleave = objects is not None and objects.interleave > 0
        return cls(
            model,
            freeze_tower_bn=spec.freeze_tower_bn,
            relevance_weight=spec.relevance_loss_weight,
            relevance_layer=spec.relevance_layer,
            train_relevance_head=spec.train_relevance_head,
            attribute_weight=spec.attribute_loss_weight,
            attribute_layer=spec.attribute_layer,
            attribute_count=spec.attribute_count,
            attribute_new_objects=spec.attribute_new_objects,
            question_weight=spec.question_loss_weight,
            object_weight=objects.interleave_weight if interleave else 0.0,
            object_noise=objects.noise if interleave else 0.0,
        )

    def __init__(
        self,
        model,
        *,
        freeze_tower_bn: bool = True,
        relevance_weight: float = 0.0,
        relevance_layer: int = 2,
        train_relevance_head: bool = True,
        question_weight: float = 0.0,
        attribute_weight: float = 0.0,
        attribute_layer: int = 2,
        attribute_count: str = "scene",
        attribute_new_objects: bool = False,
        object_weight: float = 0.0,
        object_noise: float = 0.5,
    ) -> None:
        from vidllm.train.object_tokens import ObjectWords

        super().__init__()
        self.model = model
        self.freeze_tower_bn = freeze_tower_bn
        self.relevance_weight = relevance_weight
        self.relevance_layer = relevance_layer
        self.question_weight = question_weight
        self.attribute_weight = attribute_weight
        self.attribute_layer = attribute_layer
        self.attribute_count = attribute_count
        self.attribute_new_objects = attribute_new_objects
        self.attribute_columns = attribute_columns(attribute_new_objects)
        self.object_weight, self.object_noise = object_weight, object_noise
        self.object_words = ObjectWords(model.tokenizer) if object_weight > 0 else None
        hidden = model.lm.get_input_embeddings().embedding_dim
        self.relevance_head = nn.Linear(hidden, 1) if relevance_weight > 0 else None
        if self.relevance_head is not None and not train_relevance_head:
            self.relevance_head.requires_grad_(False)  # a fixed probe: only the LM adapts to it
        # Created after the relevance head, so a run without it draws the same initial weights.
        self.attribute_head = (
            nn.Linear(hidden, sum(self.attribute_columns.values())) if attribute_weight > 0 else None
        )

    def train(self, mode: bool = True) -> VideoLLMForTraining:
        super().train(mode)
        if self.model.scorer is not None:
            self.model.scorer.eval()
        if mode and self.freeze_tower_bn:
            for module in self.model.tower.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    # -- vision ----------------------------------------------------------------------------------

    def _features(self, batch: VideoStepBatch, used: list[int]) -> dict[int, torch.Tensor]:
        """Tower features ``(N, h, w, C)`` per used video; uniform layouts encode only their frames."""
        tower = self.model.tower
        n = batch.videos[used[0]].frames.shape[0]
        if isinstance(batch.layout, UniformConfig):
            keep = uniform_frames(n, batch.layout.num_frames)
            encoded = tower.encode(np.concatenate([batch.videos[v].frames[keep] for v in used]))
            index = torch.tensor(keep, device=encoded.device)
            out = {}
            for i, v in enumerate(used):
                chunk = encoded[i * len(keep) : (i + 1) * len(keep)]
                out[v] = chunk.new_zeros(n, *chunk.shape[1:]).index_copy(0, index, chunk)
            return out
        encoded = tower.encode(np.concatenate([batch.videos[v].frames for v in used]))
        return {v: encoded[i * n : (i + 1) * n] for i, v in enumerate(used)}

    @torch.no_grad()
    def _scores(self, batch: VideoStepBatch, used: list[int], prompts: dict) -> dict:
        """Frame and patch relevance per selected question, as ``VideoLLM.prepare`` computes them."""
        scorer = self.model.scorer
        frames = np.concatenate([batch.videos[v].frames for v in used])
        n = batch.videos[used[0]].frames.shape[0]
        device = self.model.device
        images, patches = [], []
        from vidllm._vision import as_frames, chunks

        pixels_all = as_frames(frames)
        for sl in chunks(pixels_all.shape[0], scorer.max_batch_size):
            image, patch = scorer.embed_images(scorer.preprocess(pixels_all[sl], device))
            images.append(torch.nn.functional.normalize(image.float(), dim=-1))
            patches.append(torch.nn.functional.normalize(patch.float(), dim=-1))
        images_t, patches_t = torch.cat(images), torch.cat(patches)
        out = {}
        for (v, q), prompt in prompts.items():
            text = scorer.text_embedding(prompt).to(device)
            i = used.index(v)
            out[v, q] = (images_t[i * n : (i + 1) * n] @ text, patches_t[i * n : (i + 1) * n] @ text)
        return out

    def _reductions(self, batch: VideoStepBatch, features: dict, prompts: dict) -> dict:
        """The reducer's output per selected question; RoI crops are encoded in one batch."""
        layout = batch.layout
        if isinstance(layout, UniformConfig):  # scored only for a model that reads the scores
            scores = (
                self._scores(batch, sorted(features), prompts) if self.model.config.relevance_inputs else {}
            )
            return {key: reduce_uniform(features[key[0]], layout, *scores.get(key, ())) for key in prompts}
        scores = self._scores(batch, sorted(features), prompts)
        tower = self.model.tower
        crops: dict[tuple, torch.Tensor] = {}
        if layout.roi_mode == "reencode":
            wanted: list[tuple] = []
            h, w = tower.grid
            for key in prompts:  # a dry run to learn the boxes (they depend on scores only)
                feats = features[key[0]]
                dummy = lambda f, box, key=key, feats=feats: (
                    wanted.append((key[0], f, tuple(box))) or feats.new_zeros(h, w, feats.shape[-1])
                )
                reduce_free_video_llm(feats.detach(), *scores[key], layout, reencode=dummy)
            unique = list(dict.fromkeys(wanted))
            if unique:
                frames = np.stack([batch.videos[v].frames[f] for v, f, _ in unique])
                encoded = tower.encode_crop(frames, [box for _, _, box in unique])
                crops = {item: encoded[i] for i, item in enumerate(unique)}
        out = {}
        for key in prompts:
            lookup = lambda f, box, v=key[0]: crops[v, f, tuple(box)]
            out[key] = reduce_free_video_llm(features[key[0]], *scores[key], layout, reencode=lookup)
        return out

    # -- the loss ---------------------------------------------------------------------------------

    def layouts(self, batch: VideoStepBatch) -> dict[tuple[int, int], tuple[torch.Tensor, list[int], Any]]:
        """Per selected question: the LM input ``(L, H)`` (what ``VideoLLM.prepare`` gives for the
        same frames and question, here with gradients and batched tower passes), the positions of
        its visual tokens in it, and the reduction they came from."""
        model = self.model
        used = sorted({v for v, _ in batch.selected})
        prompts = {
            (v, q): model.validate_question(batch.videos[v].questions[q].prompt) for v, q in batch.selected
        }
        features = self._features(batch, used)
        reductions = self._reductions(batch, features, prompts)
        out = {}
        for v, q in batch.selected:
            embeds, positions = model.layout(reductions[v, q], batch.videos[v].timestamps, prompts[v, q])
            out[v, q] = (embeds, positions, reductions[v, q])
        return out

    def prompt_embeds(self, batch: VideoStepBatch) -> dict[tuple[int, int], torch.Tensor]:
        """The LM input of every selected question (see :meth:`layouts`)."""
        return {key: value[0] for key, value in self.layouts(batch).items()}

    @staticmethod
    def _visual_states(batch: VideoStepBatch, layouts: dict, hidden: torch.Tensor, targets) -> tuple:
        """The visual tokens' rows of ``hidden`` ``(B, L, H)`` and ``targets(item, qa, segments)``
        for them, over every selected question, concatenated: ``(N, H)`` and ``(N, ...)``."""
        states, labels = [], []
        for i, (v, q) in enumerate(batch.selected):
            _, positions, reduction = layouts[v, q]
            item = batch.videos[v]
            states.append(hidden[i, positions])
            labels.append(torch.from_numpy(targets(item, item.questions[q], reduction.segments)))
        return torch.cat(states), torch.cat(labels).to(hidden.device)

    def _relevance_loss(self, batch: VideoStepBatch, layouts: dict, hidden: torch.Tensor):
        """Balanced BCE of "this visual token shows a subject of the question", read from the LM's
        hidden states at ``relevance_layer``; targets from the scene's boxes at the frame's time,
        mapped onto each token's region (its segment's grid over its RoI box or the frame)."""
        from vidllm.train.scorer_training import balanced_bce

        states, target = self._visual_states(
            batch, layouts, hidden, lambda item, qa, segments: item.subject_coverage(qa, segments)
        )
        logits = self.relevance_head(states).squeeze(-1).float()
        with torch.no_grad():
            accuracy = float(((logits > 0) == (target >= 0.5)).float().mean())
        return balanced_bce(logits, target), accuracy

    def _attribute_loss(self, batch: VideoStepBatch, layouts: dict, hidden: torch.Tensor):
        """Cross-entropy of the shown object's attributes (``self.attribute_columns``) at every
        visual token, read from the LM's hidden states at ``attribute_layer``. Tokens on an object
        and tokens on none weigh half each in the colour and shape terms (objects cover a few
        percent of the cells); the other attributes are asked of object tokens only, an object's
        first token and its later ones half each in the ``new_object`` term. Also returns the
        share of object tokens whose every attribute is predicted right."""
        states, target = self._visual_states(
            batch,
            layouts,
            hidden,
            lambda item, qa, segments: item.object_attributes(
                segments, count=self.attribute_count, new_objects=self.attribute_new_objects
            ),
        )
        return self._attribute_terms(states, target)

    def _attribute_terms(self, states: torch.Tensor, target: torch.Tensor):
        """The attribute loss of hidden states ``(N, H)`` against their targets ``(N, columns)``
        (:meth:`_attribute_loss`), and the share of object tokens right in every column."""
        logits = self.attribute_head(states).float().split(list(self.attribute_columns.values()), dim=-1)
        on_object = target[:, 0] != self.attribute_columns["color"] - 1  # colour not "none"
        n_object = int(on_object.sum())
        weights = _half_each(on_object, len(target))
        loss = logits[0].new_zeros(())
        right = torch.ones_like(on_object)
        for k, (name, lg) in enumerate(zip(self.attribute_columns, logits)):
            per_token = F.cross_entropy(lg, target[:, k], ignore_index=-100, reduction="none")
            if k < WITH_NONE:
                loss = loss + (per_token * weights).sum()
            elif name == "new_object":  # one first token an object against its many later ones
                loss = loss + (per_token * _half_each(target[:, k] == 1, n_object)).sum()
            else:
                loss = loss + per_token.sum() / max(n_object, 1)
            right &= (lg.argmax(-1) == target[:, k]) | (target[:, k] == -100)
        accuracy = float(right[on_object].float().mean()) if n_object else float("nan")
        return loss, accuracy

    def _question_loss(self, batch: VideoStepBatch, layouts: dict, logits: torch.Tensor) -> torch.Tensor:
        """Next-token loss on each prompt's text after the video (its last rows), the question's
        copy in the default template."""
        losses, count = [], 0
        for i, (v, q) in enumerate(batch.selected):
            length = layouts[v, q][0].shape[0]
            question = self.model.validate_question(batch.videos[v].questions[q].prompt)
            tail = torch.tensor(self.model.prompt_text_ids(question)[1], device=logits.device)
            predicted = logits[i, length - len(tail) - 1 : length - 1].float()
            losses.append(F.cross_entropy(predicted, tail, reduction="sum"))
            count += len(tail)
        return torch.stack(losses).sum() / count

    def forward(self, batch: VideoStepBatch) -> tuple[torch.Tensor, dict[str, Any]]:
        model = self.model
        tokenizer = model.tokenizer
        layouts = self.layouts(batch)
        prompts, targets = [], []
        for v, q in batch.selected:
            prompts.append(layouts[v, q][0])
            target = tokenizer(" " + batch.videos[v].questions[q].target, add_special_tokens=False)
            targets.append([*target["input_ids"], tokenizer.eos_token_id])
        inputs, mask, label_batch = pad_answer_batch(prompts, targets, model.lm.get_input_embeddings())
        relevance = self.relevance_head is not None
        attributes = self.attribute_head is not None
        out = model.lm(
            inputs_embeds=inputs,
            attention_mask=mask,
            labels=label_batch,
            use_cache=False,
            output_hidden_states=relevance or attributes,
        )
        exact = answer_accuracy(out.logits, label_batch).float().mean()
        lm_loss = out.lm_loss if getattr(out, "lm_loss", None) is not None else out.loss
        metrics = {
            "lm_loss": float(lm_loss.detach()),
            "answer_acc": float(exact),
            "questions": len(prompts),
            "seq_len": inputs.shape[1],
            "layout": batch.layout_name,
        }
        loss = out.loss
        if self.question_weight > 0:
            question_loss = self._question_loss(batch, layouts, out.logits)
            loss = loss + self.question_weight * question_loss
            metrics["question_loss"] = float(question_loss.detach())
        if relevance:
            layer = min(self.relevance_layer, len(out.hidden_states) - 1)
            relevance_loss, relevance_acc = self._relevance_loss(batch, layouts, out.hidden_states[layer])
            loss = loss + self.relevance_weight * relevance_loss
            metrics.update(relevance_loss=float(relevance_loss.detach()), relevance_acc=relevance_acc)
        if attributes:
            layer = min(self.attribute_layer, len(out.hidden_states) - 1)
            attribute_loss, attribute_acc = self._attribute_loss(batch, layouts, out.hidden_states[layer])
            loss = loss + self.attribute_weight * attribute_loss
            metrics.update(attribute_loss=float(attribute_loss.detach()), attribute_acc=attribute_acc)
        if batch.objects is not None and self.object_words is not None:
            loss = loss + self._object_loss(batch.objects, metrics)
        return loss, metrics

    def _object_loss(self, objects: ObjectStepBatch, metrics: dict[str, Any]) -> torch.Tensor:
        """``object_weight`` times the made-up sequences' answer loss and, with the attribute loss
        on, their rows' attribute loss from the same head (so made-up rows and visual tokens
        share the layer it reads)."""
        from vidllm.train.object_tokens import object_forward, object_row_attributes

        attributes = self.attribute_head is not None
        out, object_metrics = object_forward(
            self.model.lm, self.object_words, objects, self.object_noise, output_hidden_states=attributes
        )
        metrics.update(object_acc=object_metrics["answer_acc"], object_count_acc=object_metrics["count_acc"])
        loss = out.loss
        if attributes:
            hidden = out.hidden_states[min(self.attribute_layer, len(out.hidden_states) - 1)]
            rows = objects.rows.shape[1]
            states = torch.cat(
                [hidden[i, len(before) : len(before) + rows] for i, before in enumerate(objects.before)]
            )
            target = object_row_attributes(
                objects, len(self.attribute_columns), self.attribute_count == "scene"
            )
            loss = loss + self.attribute_weight * self._attribute_terms(states, target.to(states.device))[0]
        return self.object_weight * loss


# ----------------------------------------------------------------------------------------------
# stages
# ----------------------------------------------------------------------------------------------


def _layout_name(entry: dict[str, Any]) -> str:
    budget = entry.get("budget")
    name = f"{entry['reducer']}@{'default' if budget is None else budget}"
    settings = ",".join(f"{k}={v}" for k, v in entry.items() if k not in MIX_KEYS)
    return f"{name}[{settings}]" if settings else name


def _mix_layout(model, entry: dict[str, Any]) -> ReducerConfig | UniformConfig:
    """A ``reducer_mix`` entry's layout: the reducer at the budget, as at inference, with the
    entry's other keys as ``ReducerConfig`` settings (e.g. ``"roi_center": "mean"``)."""
    layout = model.resolve_reducer(entry["reducer"], entry.get("budget"))
    settings = mix_settings(entry, model.config.reducer)
    return replace(layout, **settings) if settings else layout


def make_video_batch_fn(model, preset: Preset, stage: VideoStageSpec | LoRAStageSpec, *, stage_seed: int,
                        mix: list[dict[str, Any]] | None = None, objects_fn=None):  # fmt: skip
    """``(step, rank, world_size) -> VideoStepBatch``: one layout per step drawn from ``mix`` (None:
    the stage's ``reducer_mix``), and as many questions as ``max_lm_tokens`` allows for that
    layout's length; ``objects_fn`` (same arguments) draws made-up sequences to go beside them."""
    spec = preset.video
    # the stage's own template weights and layouts (a LoRA stage's None: the video stage's)
    template_weights = spec.template_weights if stage.template_weights is None else stage.template_weights
    if mix is None:
        mix = spec.reducer_mix if stage.reducer_mix is None else stage.reducer_mix
    reducer = model.config.reducer_config()
    weights = np.array([float(e.get("weight", 1.0)) for e in mix])
    weights = weights / weights.sum()
    layouts = []
    for entry in mix:
        layout = _mix_layout(model, entry)
        tokens = plan(layout, model.tower.grid, reducer.num_frames).total
        estimate = tokens + 6 * reducer.num_frames + 40  # markers, timestamps, question, answer
        layouts.append((layout, _layout_name(entry), estimate))

    def batch_fn(step: int, rank: int, world_size: int) -> VideoStepBatch:
        rng = np.random.default_rng([preset.seed, stage_seed, step])
        layout, name, estimate = layouts[int(rng.choice(len(layouts), p=weights))]
        items = video_batch(
            step,
            videos=stage.videos,
            rank=rank,
            world_size=world_size,
            seed=preset.seed,
            num_frames=reducer.num_frames,
            questions=stage.questions,
            mc_share=spec.mc_share,
            balanced_extras=spec.balanced_extras,
            template_weights=template_weights,
            yuv420_prob=stage.yuv420_prob,
            compress_prob=stage.compress_prob,
        )
        limit = max(1, spec.max_lm_tokens // estimate)
        order = [
            (v, q) for q in range(stage.questions) for v in range(len(items)) if q < len(items[v].questions)
        ]
        objects = None if objects_fn is None else objects_fn(step, rank, world_size)
        return VideoStepBatch(items, layout, name, order[:limit], objects)

    return batch_fn


# Each stage's batches draw from their own stream (with the preset's seed and the step)
STAGE_SEEDS = {"video": 2, "lora": 3, "objects": 4, "interleaved": 5}


def _video_loss(module: nn.Module, batch: VideoStepBatch, step: int):
    return module(batch)


def _gumbel_step(module: nn.Module, step: int) -> None:
    from vidllm.lm.ffn import set_gumbel_temperature

    set_gumbel_temperature(module, step)


def video_stage(preset: Preset, wrapper: VideoLLMForTraining) -> Stage:
    """Stage 2: everything but the scorer, tower at its own learning rate."""
    spec = preset.video
    model = wrapper.model
    # the wrapper's own parameters (the relevance and attribute heads) train with the LM
    rest = [
        (n, p) for n, p in wrapper.named_parameters() if not n.startswith(("model.tower.", "model.scorer."))
    ]
    groups = [
        *decay_groups(rest, spec.lr, spec.weight_decay),
        *decay_groups(model.tower.named_parameters(), spec.tower_lr, spec.weight_decay),
    ]
    objects_fn = None
    if preset.objects.interleave > 0:
        from vidllm.train.object_tokens import make_object_batch_fn

        objects = replace(preset.objects, batch=preset.objects.interleave)
        objects_fn = make_object_batch_fn(
            model, objects, seed=preset.seed, stage_seed=STAGE_SEEDS["interleaved"]
        )
    batch_fn = make_video_batch_fn(
        model, preset, spec, stage_seed=STAGE_SEEDS["video"], objects_fn=objects_fn
    )
    return Stage(
        name="video",
        module=wrapper,
        param_groups=groups,
        steps=spec.steps,
        batch_fn=batch_fn,
        loss_fn=_video_loss,
        warmup=spec.warmup,
        grad_clip=spec.grad_clip,
        metric_names=VIDEO_METRICS,
        on_step=_gumbel_step,
        ema_decay=spec.ema_decay,
    )


def lora_stage(preset: Preset, wrapper: VideoLLMForTraining) -> Stage:
    """Stage 3: LoRA adapters on the LM (routers trained in full), tower frozen."""
    from vidllm.lm import apply_lora

    spec = preset.lora
    model = wrapper.model
    model.tower.requires_grad_(False)
    model.projector.requires_grad_(spec.train_projector)
    model.lm = apply_lora(model.lm, r=spec.r, lora_alpha=spec.alpha)
    params = [p for p in wrapper.parameters() if p.requires_grad]
    batch_fn = make_video_batch_fn(model, preset, spec, stage_seed=STAGE_SEEDS["lora"])
    return Stage(
        name="lora",
        module=wrapper,
        param_groups=[{"params": params, "lr": spec.lr, "weight_decay": 0.0}],
        steps=spec.steps,
        batch_fn=batch_fn,
        loss_fn=_video_loss,
        warmup=spec.warmup,
        metric_names=VIDEO_METRICS,
        on_step=lambda module, step: _gumbel_step(module, preset.video.steps + step),
    )


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------

_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    return " ".join(text.lower().translate(_PUNCT).split())


def as_video(frames: np.ndarray, timestamps: np.ndarray, num_frames: int, codec: str = "rawvideo"):
    """A decoded :class:`vidllm.video.Video` of ``num_frames`` frames sampled from ``frames`` the
    way the decoder samples a file (segment centres), with their true timestamps."""
    from vidllm.video import Video, VideoMeta

    total, height, width, _ = frames.shape
    keep = uniform_frames(total, num_frames)
    duration = float(timestamps[-1] + (timestamps[-1] - timestamps[0]) / max(1, total - 1))
    meta = VideoMeta(fps=total / duration, duration=duration, width=width, height=height,
                     num_frames=total, codec=codec, backend="synthetic")  # fmt: skip
    return Video(frames[keep], np.asarray(timestamps)[keep], np.asarray(keep, dtype=np.int64), meta)


def question_set_videos(split: str, num_videos: int, questions_per_video: int, num_frames: int,
                        compress: bool = True) -> Iterator[tuple[Scene, Any, list[Question]]]:  # fmt: skip
    """``(scene, video, questions)`` of a fixed question set of ``split``, video by video, rendered
    like the test split (96x96, 50 frames over 5 s, H.264 when ``compress``) and sampled to
    ``num_frames`` as the decoder samples files."""
    from vidllm.data.synthetic import QuestionSet, render
    from vidllm.data.synthetic.writer import h264_roundtrip

    qset = QuestionSet.build(split, num_videos, questions_per_video)
    by_video: dict[str, list[Question]] = defaultdict(list)
    for q in qset.questions:
        by_video[q.video_id].append(q)
    for video_id, questions in by_video.items():
        scene = qset.scene(video_id)
        frames = render(scene, 50, (96, 96))
        if compress:
            frames = h264_roundtrip(frames, fps=50 / scene.duration)
        yield (
            scene,
            as_video(frames, scene.timestamps(50), num_frames, codec="h264" if compress else "rawvideo"),
            questions,
        )


def validate(
    model,
    *,
    num_videos: int,
    questions_per_video: int = 3,
    reducers: tuple[str, ...] = ("free-video-llm", "uniform"),
    budgets: tuple[int | None, ...] = (None,),
    compress: bool = True,
    split: str = "validation",
    progress: bool = False,
) -> dict[str, Any]:
    """Open-ended accuracy on a fixed question set of ``split``, rendered like the test split
    (96x96, 50 frames over 5 s, H.264 when ``compress``) and sampled as the decoder samples files.

    Returns, per ``reducer@budget``: overall accuracy, per template, on questions about
    short-lived or small subjects, and the mean visual tokens fed.
    """
    num_frames = model.config.reducer_config().num_frames
    records: dict[str, list[dict[str, Any]]] = defaultdict(list)
    items = question_set_videos(split, num_videos, questions_per_video, num_frames, compress)
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc="validation", unit="video", total=num_videos)
    was_training = model.training
    model.eval()
    videos_seen = questions_seen = 0
    for _, video, questions in items:
        videos_seen += 1
        questions_seen += len(questions)
        for reducer in reducers:
            for budget in budgets:
                answers = model.answer_batch([video] * len(questions), [q.question for q in questions],
                                             reducer=reducer, budget=budget)  # fmt: skip
                for q, a in zip(questions, answers):
                    records[f"{reducer}@{'default' if budget is None else budget}"].append(
                        {
                            "template": q.template,
                            "correct": normalize_answer(a.text) == normalize_answer(q.answer),
                            "hard": q.short_lived or q.small,
                            "short_lived": q.short_lived,
                            "small": q.small,
                            "tokens": a.visual_tokens,
                            "uniform_tokens": a.uniform_tokens,
                        }
                    )
    model.train(was_training)
    summary: dict[str, Any] = {
        "questions": questions_seen,
        "videos": videos_seen,
        "compress": compress,
    }
    for key, rows in records.items():
        acc = lambda rs: float(np.mean([r["correct"] for r in rs])) if rs else None
        summary[key] = {
            "accuracy": acc(rows),
            "per_template": {
                t: acc([r for r in rows if r["template"] == t]) for t in sorted({r["template"] for r in rows})
            },
            "short_lived_or_small": acc([r for r in rows if r["hard"]]),
            "short_lived": acc([r for r in rows if r["short_lived"]]),
            "small": acc([r for r in rows if r["small"]]),
            "n_short_lived_or_small": sum(r["hard"] for r in rows),
            "mean_visual_tokens": float(np.mean([r["tokens"] for r in rows])),
            "full_tokens": float(np.mean([r["uniform_tokens"] for r in rows])),
        }
    return summary


# ----------------------------------------------------------------------------------------------
# the whole pipeline
# ----------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    status: str  # "done" or "stopped"
    output_dir: Path
    model_dir: Path | None
    stages: dict[str, StageResult] = field(default_factory=dict)
    validation: dict[str, Any] | None = None
    main_process: bool = True  # False in the other processes of a distributed run


def _load_or_train_tokenizer(preset: Preset, directory: Path, is_main: bool, barrier):
    from transformers import AutoTokenizer

    from vidllm.train.tokenizer import train_tokenizer, world_corpus

    if not (directory / "tokenizer.json").is_file():
        if is_main:
            tokenizer = train_tokenizer(
                world_corpus(preset.model.tokenizer_corpus_items, seed=preset.seed),
                vocab_size=preset.model.tokenizer_vocab_size,
            )
            tmp = directory.with_name(directory.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tokenizer.save_pretrained(tmp)
            tmp.rename(directory)
        barrier()
    return AutoTokenizer.from_pretrained(directory)


def _versions() -> dict[str, str | None]:
    import importlib.metadata

    out = {}
    for name in ("torch", "transformers", "accelerate", "tokenizers", "peft", "timm"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def export_model(model, directory: Path, preset: Preset, stages: dict[str, StageResult], output_dir: Path,
                 validation: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """Write the model, ``training_config.json`` and ``loss_curve.png`` into ``directory``."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    write_training_record(tmp, preset, stages, output_dir, validation)
    if directory.exists():
        shutil.rmtree(directory)
    tmp.rename(directory)
    return directory


def _exported_record(model_dir: Path) -> dict[str, Any] | None:
    """The training record of a complete exported model in ``model_dir``, if there is one."""
    record_file = model_dir / CONFIG_FILE
    if not (record_file.is_file() and (model_dir / "vision.safetensors").is_file()):
        return None
    record = json.loads(record_file.read_text())
    record["steps"] = {name: stage["steps"] for name, stage in record.get("stages", {}).items()}
    return record


def write_training_record(directory: Path, preset: Preset, stages: dict[str, StageResult], output_dir: Path,
                          validation: dict[str, Any] | None) -> None:  # fmt: skip
    record = {
        "preset": preset.to_dict(),
        "command": f"vidllm train --preset {preset.name}",
        "stages": {
            name: {"steps": r.step, "train_seconds": round(r.elapsed, 1)} for name, r in stages.items()
        },
        "train_seconds": round(sum(r.elapsed for r in stages.values()), 1),
        "machine": {
            "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(),
            "cpu": cpu_info(),
        },
        "versions": _versions(),
        "validation": validation,
    }
    (directory / CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n")
    logs = {name: output_dir / name / "log.csv" for name in stages}
    plot_loss_curves(logs, directory / CURVE_FILE, title=f"vidllm train --preset {preset.name}")


def train(
    preset: Preset,
    output_dir: str | Path,
    *,
    max_minutes: float | None = None,
    export_dir: str | Path | None = None,
    stop_at: dict[str, int] | None = None,
    progress: bool = True,
    run_validation: bool = True,
    accelerator=None,
) -> TrainResult:
    """Run (or resume) every stage of ``preset`` in ``output_dir`` and export the model.

    Args:
        max_minutes: wall-clock limit of this invocation; the stage in progress checkpoints and
            the call returns with status ``"stopped"`` (run it again to continue).
        export_dir: also copy the exported model there (e.g. ``vidllm/checkpoints/default``).
        stop_at: per stage name, a step at which to stop (with a checkpoint) as if interrupted.
        run_validation: measure validation accuracy (both reducers) after training.
    """
    threads = torch.get_num_threads()
    if preset.threads:
        torch.set_num_threads(preset.threads)
    try:
        return _train(preset, Path(output_dir), max_minutes, export_dir, stop_at or {}, progress,
                      run_validation, accelerator)  # fmt: skip
    finally:
        torch.set_num_threads(threads)


def _train(preset: Preset, output_dir: Path, max_minutes: float | None, export_dir, stop_at: dict[str, int],
           progress: bool, run_validation: bool, accelerator) -> TrainResult:  # fmt: skip
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    from vidllm.lm.training import float32_attention
    from vidllm.train.scorer_training import build_dual_encoder, scorer_stage

    start = time.monotonic()
    deadline = None if max_minutes is None else start + 60.0 * max_minutes
    accelerator = accelerator or Accelerator(
        cpu=not torch.cuda.is_available(),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "preset.json").write_text(preset.to_json())
    accelerator.wait_for_everyone()
    common = dict(
        accelerator=accelerator,
        checkpoint_every=preset.checkpoint_every,
        log_every=preset.log_every,
        keep_checkpoints=preset.keep_checkpoints,
        deadline=deadline,
        progress=progress,
        bf16=preset.bf16,
    )
    results: dict[str, StageResult] = {}
    tokenizer = _load_or_train_tokenizer(
        preset, output_dir / TOKENIZER_DIR, accelerator.is_main_process, accelerator.wait_for_everyone
    )

    torch.manual_seed(preset.seed)
    dual = build_dual_encoder(preset, tokenizer)
    results["scorer"] = run_stage(
        scorer_stage(preset, tokenizer, dual), output_dir / "scorer", stop_at=stop_at.get("scorer"), **common
    )
    if results["scorer"].status != "done":
        return TrainResult("stopped", output_dir, None, results, None, accelerator.is_main_process)

    torch.manual_seed(preset.seed + 1)
    model = build_video_llm(preset, tokenizer, dual)
    wrapper = VideoLLMForTraining.from_spec(model, preset.video, preset.objects)
    if preset.objects.steps > 0:
        from vidllm.train.object_tokens import object_stage

        # its own generators: the video stage draws what it would without this stage
        with torch.random.fork_rng():
            results["objects"] = run_stage(
                object_stage(preset, model, stage_seed=STAGE_SEEDS["objects"]),
                output_dir / "objects",
                stop_at=stop_at.get("objects"),
                **common,
            )
        if results["objects"].status != "done":
            return TrainResult("stopped", output_dir, None, results, None, accelerator.is_main_process)
    with float32_attention(model.lm, enabled=preset.bf16 and preset.fp32_attention):
        results["video"] = run_stage(
            video_stage(preset, wrapper), output_dir / "video", stop_at=stop_at.get("video"), **common
        )
        if results["video"].status != "done":
            return TrainResult("stopped", output_dir, None, results, None, accelerator.is_main_process)

        if preset.lora.steps > 0:
            torch.manual_seed(preset.seed + 2)
            results["lora"] = run_stage(
                lora_stage(preset, wrapper), output_dir / "lora", stop_at=stop_at.get("lora"), **common
            )
            if results["lora"].status != "done":
                return TrainResult("stopped", output_dir, None, results, None, accelerator.is_main_process)
            model.lm = model.lm.merge_and_unload()

    model_dir = output_dir / MODEL_DIR
    validation = None
    if accelerator.is_main_process:
        previous = _exported_record(model_dir)
        steps = {name: r.step for name, r in results.items()}
        if previous is not None and previous.get("steps") == steps:
            logger.info("%s already holds the model of these stages; not exported again", model_dir)
            validation = previous.get("validation")
        else:
            model.eval()
            export_model(model, model_dir, preset, results, output_dir)
        if validation is None and run_validation and preset.validation.num_videos > 0:
            from vidllm.model import VideoLLM

            exported = VideoLLM.from_pretrained(model_dir)
            spec = preset.validation
            validation = validate(
                exported,
                num_videos=spec.num_videos,
                questions_per_video=spec.questions_per_video,
                budgets=tuple(spec.budgets),
                compress=spec.compress,
                progress=progress,
            )
            (output_dir / VALIDATION_FILE).write_text(json.dumps(validation, indent=2) + "\n")
            write_training_record(model_dir, preset, results, output_dir, validation)
        if export_dir is not None:
            export_dir = Path(export_dir)
            if export_dir.exists():
                shutil.rmtree(export_dir)
            shutil.copytree(model_dir, export_dir)
            logger.info("model exported to %s", export_dir)
    accelerator.wait_for_everyone()
    logger.info("training finished in %.1f min", (time.monotonic() - start) / 60)
    return TrainResult("done", output_dir, model_dir, results, validation, accelerator.is_main_process)


__all__ = [
    "STAGE_SEEDS",
    "TrainResult",
    "VideoLLMForTraining",
    "VideoStepBatch",
    "as_video",
    "build_video_llm",
    "export_model",
    "gumbel_decay",
    "lora_stage",
    "make_video_batch_fn",
    "normalize_answer",
    "question_set_videos",
    "train",
    "validate",
    "video_stage",
]
