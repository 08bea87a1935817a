"""Does a trained video LLM look at what it is asked about? Its answer position's attention.

With the model's default reducer, on training-distribution videos of the synthetic world (indices
far from any batch a run of up to ~10^5 steps draws): how much of the last prompt token's
attention (the position that predicts the answer) lands on the question's subject tokens (a
token whose cell the subject covers by a quarter or more), per layer and head, against the share
of visual tokens that are subject tokens; and the teacher-forced answer accuracy per template
(every answer token the argmax). Together with ``scripts/probe_tower.py`` (is the answer in the
tower's features?) it tells a failure to find the subject from a failure to read it.

    .venv/bin/python scripts/answer_attention.py [--model default] [--videos 150]
"""

from __future__ import annotations

import argparse
import logging
from collections import defaultdict

import numpy as np
import torch

logger = logging.getLogger("answer_attention")

FIRST_INDEX = 5_000_000  # video_item indices used here


def attention(model, videos: int) -> dict[str, dict]:
    from vidllm.train.data import video_item
    from vidllm.train.trainer import VideoLLMForTraining, VideoStepBatch

    maps: list[torch.Tensor] = []
    hooks = [
        layer.self_attn.register_forward_hook(lambda _m, _i, out: maps.append(out[1]))
        for layer in model.lm.model.layers
    ]
    implementation = model.lm.config._attn_implementation
    model.lm.config._attn_implementation = "eager"  # the only one that returns attention maps
    wrapper = VideoLLMForTraining(model).eval()
    layout = model.resolve_reducer("free-video-llm", None)
    records: dict[str, list] = defaultdict(list)
    embed = model.lm.get_input_embeddings()
    try:
        with torch.no_grad():
            for i in range(videos):
                item = video_item(FIRST_INDEX + i, seed=0, num_frames=32, questions=3, mc_share=0.0)
                batch = VideoStepBatch(
                    [item], layout, "default", [(0, q) for q in range(len(item.questions))]
                )
                for (_, q), (embeds, positions, reduction) in wrapper.layouts(batch).items():
                    qa = item.questions[q]
                    subject = torch.from_numpy(item.subject_coverage(qa, reduction.segments) >= 0.25)
                    if not subject.any():
                        continue
                    target = model.tokenizer(" " + qa.target, add_special_tokens=False)["input_ids"]
                    ids = torch.tensor(target, device=model.device)
                    maps.clear()
                    logits = model.lm(
                        inputs_embeds=torch.cat([embeds, embed(ids)])[None], use_cache=False
                    ).logits
                    last = embeds.shape[0] - 1
                    right = bool((logits[0, last : last + len(target)].argmax(-1) == ids).all())
                    visual = torch.stack(
                        [m[0, :, last, positions] for m in maps]
                    ).float()  # (layers, heads, N)
                    records[qa.question.template].append(
                        (visual[..., subject].sum(-1), float(subject.float().mean()), right)
                    )
    finally:
        model.lm.config._attn_implementation = implementation
        for hook in hooks:
            hook.remove()
    out = {}
    for template, rows in sorted(records.items()):
        out[template] = {
            "n": len(rows),
            "accuracy": float(np.mean([r[2] for r in rows])),
            "subject_share": float(np.mean([r[1] for r in rows])),
            "subject_mass": torch.stack([r[0] for r in rows]).mean(0).tolist(),  # [layer][head]
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="vidllm.load name or checkpoint directory")
    parser.add_argument("--videos", type=int, default=150, help="videos (3 questions each)")
    args = parser.parse_args()
    if args.videos < 1:
        parser.error("--videos must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import vidllm

    try:
        model = vidllm.load(args.model).eval()
    except (FileNotFoundError, ValueError) as exc:
        parser.error(str(exc))
    logger.info(
        "| template | n | answer acc. | subject share of visual tokens | subject mass, layer: heads |"
    )
    logger.info("|---|---|---|---|---|")
    for template, r in attention(model, args.videos).items():
        layers = "; ".join(
            f"{i}: " + " ".join(f"{m:.2f}" for m in heads) for i, heads in enumerate(r["subject_mass"])
        )
        logger.info("| %s | %d | %.1f%% | %.3f | %s |", template, r["n"], 100 * r["accuracy"],
                    r["subject_share"], layers)  # fmt: skip


if __name__ == "__main__":
    main()
