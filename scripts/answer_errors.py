"""What a model answers wrong on the synthetic test split, from an evaluation's ``samples.jsonl``.

Four tables per run: the count confusion (gold count -> the answers given; all: the share
right), the count questions answered right by gold count and by how many objects the clip has,
the count questions about two or more objects answered right by how many of them the reducer's
crops showed (an object whose centre lies in the crop of a kept slow or middle frame where it is
on screen; from the samples' ``boxes``; layouts with crops only), and the kinds of wrong answers
to "Which appears first, the A or the B?": the other option, or a colour and shape that is no
option at all (the object that appears first in the clip, another object of the clip, or one
that is not in it). The scene of each clip comes from the split's ``scenes.json``, the frame
size and count from the ``manifest.json`` beside it.

    .venv/bin/python scripts/answer_errors.py outputs/eval/default_model/free-video-llm/samples.jsonl
    .venv/bin/python scripts/answer_errors.py v11=PATH v12=PATH   # side by side
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections import Counter
from pathlib import Path

from vidllm.data.synthetic.scene import SceneObject

logger = logging.getLogger("answer_errors")

COUNT = re.compile(r"^How many (.+)s appear in the video\?")
FIRST = re.compile(r"^Which appears first, the (.+) or the (.+)\?")
FIRST_KINDS = (
    "right",
    "the other option",
    "no option: the clip's first object",
    "no option: another object of the clip",
    "no option: not in the clip",
)


def _named(obj: dict) -> str:
    return f"{obj['color']} {obj['shape']}"


def first_kind(prediction: str, answer: str, options: tuple[str, ...], earliest: str, scene: dict) -> str:
    """Which of FIRST_KINDS a "which appears first" answer is (``earliest``: the clip's first object)."""
    if prediction == answer:
        return FIRST_KINDS[0]
    if prediction in options:
        return FIRST_KINDS[1]
    if prediction == earliest:
        return FIRST_KINDS[2]
    if prediction in {_named(o) for o in scene["objects"]}:
        return FIRST_KINDS[3]
    return FIRST_KINDS[4]


def subjects_in_crops(sample: dict, scene: dict, size: tuple[int, int], num_frames: int) -> tuple[int, int]:
    """(objects of the count question's shape in the clip, how many of them some crop showed).

    ``sample["boxes"]`` maps a kept frame (of the video's ``num_frames``) to its crop in pixels
    of a ``size = (H, W)`` frame (the manifest's); frame ``i`` shows the scene at time ``i / num_frames``.
    """
    shape = COUNT.match(sample["question"]).group(1)
    subjects = [SceneObject(**o) for o in scene["objects"] if o["shape"] == shape]
    height, width = size
    shown = set()
    for frame, (x0, y0, x1, y1) in sample["boxes"].items():
        t = int(frame) / num_frames
        for i, obj in enumerate(subjects):
            if obj.visible(t):
                x, y = (float(v) for v in obj.position(t))
                if x0 <= x * width <= x1 and y0 <= y * height <= y1:
                    shown.add(i)
    return len(subjects), len(shown)


def analyse(
    samples: list[dict], scenes: dict[str, dict], size: tuple[int, int], num_frames: int
) -> tuple[dict[str, Counter], Counter, int, Counter, Counter]:
    """(count confusion: gold -> Counter of answers, first-question kinds, first questions whose
    clip's first object is neither option, count questions ``(gold, objects in the clip, right)``,
    count questions about two or more objects ``(subjects, subjects in some crop, right)``)."""
    confusion: dict[str, Counter] = {}
    kinds: Counter = Counter()
    by_objects: Counter = Counter()
    by_crops: Counter = Counter()
    first_not_an_option = 0
    for sample in samples:
        template = sample["group"]["template"]
        prediction = sample["prediction"].strip()
        scene = scenes[Path(sample["video"]).stem]
        if template == "count":
            confusion.setdefault(sample["answer"], Counter())[prediction] += 1
            by_objects[sample["answer"], len(scene["objects"]), prediction == sample["answer"]] += 1
            if int(sample["answer"]) >= 2 and sample["boxes"]:  # a layout with crops
                by_crops[
                    (*subjects_in_crops(sample, scene, size, num_frames), prediction == sample["answer"])
                ] += 1
        elif template == "first":
            options = FIRST.match(sample["question"]).groups()
            earliest = _named(min(scene["objects"], key=lambda o: o["start"]))
            kinds[first_kind(prediction.lower(), sample["answer"].lower(), options, earliest, scene)] += 1
            first_not_an_option += earliest not in options
    return confusion, kinds, first_not_an_option, by_objects, by_crops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="samples.jsonl, or NAME=samples.jsonl")
    parser.add_argument("--scenes", default="outputs/synthetic_test/scenes.json",
                        help="the split's scenes (python -m eval synthetic-report writes it)")  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    scenes = {s["video_id"]: s for s in json.loads(Path(args.scenes).read_text())}
    manifest = json.loads((Path(args.scenes).parent / "manifest.json").read_text())
    size, num_frames = tuple(manifest["size"]), int(manifest["num_frames"])
    results = {}
    for run in args.runs:
        name, _, path = run.rpartition("=")
        samples = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        results[name or path] = analyse(samples, scenes, size, num_frames)

    names = list(results)
    for name in names:
        confusion, _, _, by_objects, by_crops = results[name]
        answers = sorted(set(confusion) | {a for c in confusion.values() for a in c})
        logger.info("\n%s: count questions, gold (rows) against answers given (columns)\n", name)
        logger.info("| gold | %s | right |", " | ".join(answers))
        logger.info("|---|%s---|", "---|" * len(answers))
        for gold in sorted(confusion):
            row = confusion[gold]
            logger.info("| %s | %s | %d/%d |", gold, " | ".join(str(row[a]) for a in answers), row[gold],
                        sum(row.values()))  # fmt: skip
        total = Counter()
        for row in confusion.values():
            total.update(row)
        right = sum(confusion[gold][gold] for gold in confusion)
        logger.info("| all | %s | %d/%d (%.1f%%) |", " | ".join(str(total[a]) for a in answers), right,
                    sum(total.values()), 100 * right / max(sum(total.values()), 1))  # fmt: skip
        sizes = sorted({n for _, n, _ in by_objects})
        logger.info("\n%s: count questions right, by gold (rows) and objects in the clip (columns)\n", name)
        logger.info("| gold | %s |", " | ".join(f"{n} objects" for n in sizes))
        logger.info("|---|%s", "---|" * len(sizes))
        for gold in sorted(confusion):
            cells = [
                (by_objects[gold, n, True], by_objects[gold, n, True] + by_objects[gold, n, False])
                for n in sizes
            ]
            logger.info("| %s | %s |", gold, " | ".join(f"{r}/{t}" if t else "-" for r, t in cells))
        if not by_crops:
            continue
        logger.info(
            "\n%s: count questions about two or more objects right, by objects asked about (rows) "
            "and how many of them the crops showed (columns)\n",
            name,
        )
        subjects = sorted({n for n, _, _ in by_crops})
        logger.info("| objects | %s |", " | ".join(f"{k} shown" for k in range(max(subjects) + 1)))
        logger.info("|---|%s", "---|" * (max(subjects) + 1))
        for n in subjects:
            cells = [
                (by_crops[n, k, True], by_crops[n, k, True] + by_crops[n, k, False])
                for k in range(max(subjects) + 1)
            ]
            logger.info("| %d | %s |", n, " | ".join(f"{r}/{t}" if t else "-" for r, t in cells))
    logger.info("\nwhich appears first: answers by kind\n")
    logger.info("| answer | %s |", " | ".join(names))
    logger.info("|---|%s", "---|" * len(names))
    for kind in FIRST_KINDS:
        logger.info("| %s | %s |", kind, " | ".join(str(results[n][1][kind]) for n in names))
    logger.info("| questions whose clip's first object is neither option | %s |",
                " | ".join(f"{results[n][2]} of {sum(results[n][1].values())}" for n in names))  # fmt: skip


if __name__ == "__main__":
    main()
