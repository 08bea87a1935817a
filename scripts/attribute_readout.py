"""What has a run's attribute loss taught the LM? Its attribute head's accuracy per attribute.

A run trained with ``video.attribute_loss_weight > 0`` keeps the loss's linear head in its
video-stage checkpoints (on the training wrapper, not in the exported model). This reads the
run's model and that head, and on training-distribution videos of the synthetic world (indices no
run draws), with the model's default reducer, reports per attribute the head's accuracy on the
visual tokens that show an object (and for colour and shape, on those that show none), next to
the share of the most frequent class (what a head that ignores the token would get); then the
same-shape count's accuracy against both counts it can be trained on (``video.attribute_count``:
the scene's, or the objects shown so far in the sequence, all a causal LM can know), on the
tokens where they differ and where they agree. A run trained with ``video.attribute_new_objects``
also has its ``new_object`` flag read out. Last, per right answer of the count questions among
them: how often the LM's most probable digit is right, how often the tokens show every object of
the asked shape (counting the objects' first tokens, the true flags), and how often the head's
flagged tokens of the asked shape count right.

    .venv/bin/python scripts/attribute_readout.py --run runs/default [--videos 60]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger("attribute_readout")

FIRST_INDEX = 5_000_000  # video_item indices used here (as scripts/answer_attention.py)


def readout(wrapper, videos: int) -> tuple[dict, dict, dict]:
    """Per attribute, the accuracy of ``wrapper``'s attribute head (a ``VideoLLMForTraining``);
    its same-shape count's accuracy against each of ``ATTRIBUTE_COUNTS`` (the scene's count, or
    the objects seen so far in the sequence) on the object tokens where the two differ, where
    they agree and on all (``share``: of the object tokens); and per right answer of the count
    questions, how often the LM's most probable digit is right, how often the tokens show every
    object of the asked shape (their objects' first tokens, counted) and, with a ``new_object``
    column, how often the head's flagged tokens of the asked shape count right."""
    from vidllm.data.synthetic import SHAPES
    from vidllm.train.data import ATTRIBUTE_COUNTS, WITH_NONE, video_item
    from vidllm.train.trainer import VideoStepBatch

    model, head, layer = wrapper.model, wrapper.attribute_head, wrapper.attribute_layer
    columns = wrapper.attribute_columns
    count_column = list(columns).index("same_shape_count")
    layout = model.resolve_reducer("free-video-llm", None)
    num_frames = model.config.reducer_config().num_frames
    predicted, counts = [], {count: [] for count in ATTRIBUTE_COUNTS}
    counting = {}  # right answer -> [questions, LM right, true flags right, head's flags right]
    tokenizer = model.tokenizer
    space, *_ = tokenizer(" 0", add_special_tokens=False)["input_ids"]
    digits = [tokenizer(f" {d}", add_special_tokens=False)["input_ids"][-1] for d in range(5)]
    with torch.no_grad():
        for i in range(videos):
            item = video_item(FIRST_INDEX + i, seed=0, num_frames=num_frames, questions=3, mc_share=0.0)
            batch = VideoStepBatch([item], layout, "default", [(0, q) for q in range(len(item.questions))])
            for (_, q), (embeds, positions, reduction) in wrapper.layouts(batch).items():
                # with the answer's leading space after the prompt: a causal LM's states before it
                # are the prompt's own, and its last logits give the answer's first word
                spaced = torch.cat([embeds, model.lm.get_input_embeddings()(torch.tensor([space]))])
                hidden = model.lm(inputs_embeds=spaced[None], use_cache=False, output_hidden_states=True)
                states = hidden.hidden_states[layer][0, positions].float()
                logits = head(states).split(list(columns.values()), dim=-1)
                guess = torch.stack([lg.argmax(-1) for lg in logits], dim=1).numpy()
                predicted.append(guess)
                question = item.questions[q].question
                if question.template == "count":
                    answer = int(hidden.logits[0, -1, digits].argmax())  # teacher-forced digit
                    shape = SHAPES.index(question.slots["shape"])
                    true = item.object_attributes(reduction.segments, new_objects=True)
                    tables = [true] + ([guess] if wrapper.attribute_new_objects else [])
                    flagged = [int(((t[:, -1] == 1) & (t[:, 1] == shape)).sum()) for t in tables]
                    row = counting.setdefault(int(question.answer), [0, 0, 0, 0])
                    for k, n in enumerate([answer, *flagged]):
                        row[k + 1] += n == int(question.answer)
                    row[0] += 1
                for count, rows in counts.items():
                    rows.append(
                        item.object_attributes(
                            reduction.segments, count=count, new_objects=wrapper.attribute_new_objects
                        )
                    )
    tables = {count: np.concatenate(t) for count, t in counts.items()}
    pred, true = np.concatenate(predicted), tables[wrapper.attribute_count]
    on_object = true[:, WITH_NONE] != -100
    out = {}
    for k, name in enumerate(columns):
        t, p = true[on_object, k], pred[on_object, k]
        row = {"object_tokens": int(on_object.sum()), "accuracy": float((t == p).mean()),
               "majority": float(np.bincount(t).max() / len(t))}  # fmt: skip
        if k < WITH_NONE:  # colour and shape also name "none"
            row["none_accuracy"] = float((pred[~on_object, k] == true[~on_object, k]).mean())
        if name == "new_object":  # a rare class: the accuracy on each (the loss weighs them evenly)
            row["first_tokens"] = float((p[t == 1] == 1).mean())
            row["later_tokens"] = float((p[t == 0] == 0).mean())
        out[name] = row
    counted = {count: t[on_object, count_column] for count, t in tables.items()}
    differ = counted["scene"] != counted["seen"]
    guess = pred[on_object, count_column]
    by_count = {}
    for tokens, mask in (("differ", differ), ("agree", ~differ), ("all", np.ones_like(differ))):
        row = {"share": float(mask.mean())}
        row.update({count: float((guess[mask] == t[mask]).mean()) for count, t in counted.items()})
        by_count[tokens] = row
    return out, by_count, dict(sorted(counting.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a `vidllm train` output directory")
    parser.add_argument("--videos", type=int, default=60, help="videos (3 questions each)")
    args = parser.parse_args()
    if args.videos < 1:
        parser.error("--videos must be at least 1")
    run = Path(args.run)
    from vidllm.train.checkpoint import checkpoint_weights, latest_checkpoint
    from vidllm.train.loop import CHECKPOINT_DIR

    checkpoint = latest_checkpoint(run / "video" / CHECKPOINT_DIR)
    if not (run / "model").is_dir() or checkpoint is None:
        parser.error(f"{run} has no exported model and video-stage checkpoint")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import json

    import vidllm

    preset = json.loads((run / "preset.json").read_text())["video"]
    state = checkpoint_weights(checkpoint)
    if "attribute_head.weight" not in state:
        parser.error(f"{checkpoint} has no attribute head (the run trained without the attribute loss)")
    from vidllm.train.trainer import VideoLLMForTraining

    wrapper = VideoLLMForTraining(
        vidllm.load(str(run / "model")),
        attribute_weight=1.0,
        attribute_layer=preset["attribute_layer"],
        attribute_count=preset.get("attribute_count", "scene"),  # runs before the field: "scene"
        attribute_new_objects=preset.get("attribute_new_objects", False),
    ).eval()
    wrapper.attribute_head.load_state_dict(
        {name: state[f"attribute_head.{name}"] for name in ("weight", "bias")}
    )
    logger.info("%s, layer %d, %s", run, preset["attribute_layer"], checkpoint.name)
    logger.info("| attribute | object tokens | accuracy | majority class | accuracy on no-object tokens |")
    logger.info("|---|---|---|---|---|")
    attributes, by_count, counting = readout(wrapper, args.videos)
    for name, r in attributes.items():
        none = f"{100 * r['none_accuracy']:.1f}%" if "none_accuracy" in r else ""
        logger.info("| %s | %d | %.1f%% | %.1f%% | %s |", name, r["object_tokens"], 100 * r["accuracy"],
                    100 * r["majority"], none)  # fmt: skip
    if "new_object" in attributes:
        r = attributes["new_object"]
        logger.info(
            "new_object: right on %.1f%% of objects' first tokens and %.1f%% of their later ones",
            100 * r["first_tokens"],
            100 * r["later_tokens"],
        )
    logger.info(
        "\nsame_shape_count (trained on %r) against each count, by object tokens", wrapper.attribute_count
    )
    logger.info("| object tokens where scene and seen | share | right as scene | right as seen |")
    logger.info("|---|---|---|---|")
    for tokens, r in by_count.items():
        logger.info(
            "| %s | %.1f%% | %.1f%% | %.1f%% |", tokens, 100 * r["share"], 100 * r["scene"], 100 * r["seen"]
        )
    logger.info(
        "\ncount questions counted right: the LM's answer, the objects the tokens show, the head's flags"
    )
    logger.info("| right answer | questions | LM's digit | objects the tokens show | flagged by the head |")
    logger.info("|---|---|---|---|---|")
    for answer, row in [*counting.items(), ("all", [sum(r[k] for r in counting.values()) for k in range(4)])]:
        head_flags = str(row[3]) if wrapper.attribute_new_objects else "-"
        logger.info("| %s | %d | %d | %d | %s |", answer, *row[:3], head_flags)


if __name__ == "__main__":
    main()
