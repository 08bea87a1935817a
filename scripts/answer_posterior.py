"""How sure is a model of each answer it could give? Teacher-forced answer probabilities.

For each question of a written synthetic split (``python -m eval synthetic-report`` writes the
test split to ``outputs/synthetic_test``), with the model's default reducer, scores every
candidate answer (the template's whole answer space; the two options of a "which appears
first" question) as the LM's probability of ``" " + candidate`` and the end of
text, and reports:

- per template, how often the most probable candidate is the right one: what answers held to
  the candidates would score, next to the answers the model generates (``--samples``);
- the same with the training answer prior divided out (each candidate's probability over its
  share of the template's trained answers, ``scripts/answer_prior.py``'s count): what an even
  answer prior could buy without seeing more (not for "first", whose candidates are objects);
- for the templates in ``--matrix``, the mean probability of each candidate per right answer.

    .venv/bin/python scripts/answer_posterior.py [--model default] [--templates count first]
        [--samples outputs/eval/v12/free-video-llm/samples.jsonl] [--prior-steps 300]
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter, defaultdict
from pathlib import Path

import torch

logger = logging.getLogger("answer_posterior")


@torch.no_grad()
def candidate_probs(model, embeds: torch.Tensor, candidates: list[str]) -> torch.Tensor:
    """``(len(candidates),)`` the LM's probabilities of each ``" " + candidate`` then end of text
    after the prompt ``embeds`` ``(L, H)``, normalised over the candidates."""
    tokenizer = model.tokenizer
    ids = [
        [*tokenizer(" " + c, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
        for c in candidates
    ]
    prompt = embeds.shape[0]
    width = prompt + max(len(i) for i in ids)
    batch = torch.zeros(len(ids), width, embeds.shape[1], dtype=embeds.dtype, device=embeds.device)
    mask = torch.zeros(len(ids), width, dtype=torch.long, device=embeds.device)
    embed = model.lm.get_input_embeddings()
    for row, target in enumerate(ids):
        batch[row, :prompt] = embeds
        batch[row, prompt : prompt + len(target)] = embed(torch.tensor(target, device=embeds.device))
        mask[row, : prompt + len(target)] = 1
    logprobs = torch.log_softmax(model.lm(inputs_embeds=batch, attention_mask=mask).logits.float(), -1)
    scores = torch.stack(
        [
            logprobs[row, prompt - 1 + torch.arange(len(target)), torch.tensor(target)].sum()
            for row, target in enumerate(ids)
        ]
    )
    return torch.softmax(scores, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default", help="a model name or directory (vidllm.load)")
    parser.add_argument("--split-dir", default="outputs/synthetic_test", help="a written synthetic split")
    parser.add_argument("--templates", nargs="*", default=None, help="only these templates (default: all)")
    parser.add_argument("--matrix", nargs="*", default=["count"], help="templates to show per right answer")
    parser.add_argument(
        "--samples", help="an evaluation's samples.jsonl of the same model: its generated answers"
    )
    parser.add_argument("--preset", default="default", help="the preset whose trained answers give the prior")
    parser.add_argument("--prior-steps", type=int, default=300, help="batches drawn for the prior (0: none)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import vidllm
    from eval.metrics import normalized_match
    from vidllm.data.synthetic.questions import answer_space
    from vidllm.data.synthetic.scene import WorldConfig

    split = Path(args.split_dir)
    manifest = json.loads((split / "manifest.json").read_text())
    files = manifest["files"]
    world = WorldConfig.from_dict(manifest["config"])
    keys = {a["question_id"]: a for a in json.loads((split / files["qa_answers"]).read_text())}
    questions = [
        (q, keys[q["question_id"]])
        for q in json.loads((split / files["qa_questions"]).read_text())
        if args.templates is None or keys[q["question_id"]]["template"] in args.templates
    ]
    generated = {}
    if args.samples:
        for line in Path(args.samples).read_text().splitlines():
            if line.strip():
                sample = json.loads(line)
                generated[sample["id"]] = normalized_match(sample["prediction"], sample["answer"])

    prior: Counter = Counter()
    if args.prior_steps:
        from answer_prior import trained_answers  # this script's neighbour

        prior = trained_answers(args.preset, {}, args.model, args.prior_steps)

    model = vidllm.load(args.model)
    right: dict[str, Counter] = defaultdict(Counter)
    matrix: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    columns: dict[str, list[str]] = {}
    gold_n: dict[str, Counter] = defaultdict(Counter)
    for question, key in questions:
        template, answer = key["template"], key["answer"]
        candidates = list(key["candidates"] if template == "first" else answer_space(template, world))
        video = split / manifest["video_dir"] / f"{question['video_name']}.mp4"
        probs = candidate_probs(model, model.prepare(str(video), question["question"]).embeds, candidates)
        gold = candidates.index(answer)
        row = right[template]
        row["n"] += 1
        row["held"] += int(probs.argmax()) == gold
        if question["question_id"] in generated:
            row["generated n"] += 1
            row["generated"] += generated[question["question_id"]]
        shares = [prior[template, c] for c in candidates]
        if template != "first" and all(shares):
            row["adjusted"] += int((probs / torch.tensor(shares, dtype=probs.dtype)).argmax()) == gold
        if template in args.matrix:
            order = columns.setdefault(template, sorted(candidates, key=lambda c: (len(c), c)))
            by_name = dict(zip(candidates, probs))
            total = matrix[template].get(answer, torch.zeros(len(order)))
            matrix[template][answer] = total + torch.stack([by_name[c] for c in order])
            gold_n[template][answer] += 1

    lines = [
        f"{args.model} on {split} ({len(questions)} questions; prior: {args.preset}, {args.prior_steps} steps)",
        "",
        "| template | n | generated | most probable candidate | prior divided out |",
        "|---|---|---|---|---|",
    ]
    for template in sorted(right):
        row = right[template]
        gen = f"{row['generated'] / row['generated n']:.1%}" if row["generated n"] else "-"
        adjusted = f"{row['adjusted'] / row['n']:.1%}" if template != "first" and prior else "-"
        lines.append(f"| {template} | {row['n']} | {gen} | {row['held'] / row['n']:.1%} | {adjusted} |")
    for template, rows in matrix.items():
        order = columns[template]
        lines += ["", f"{template}: mean probability of each candidate (columns) per right answer (rows)", ""]
        lines += [f"| right | n | {' | '.join(order)} |", "|---|---|" + "---|" * len(order)]
        for answer in (a for a in order if a in rows):
            mean = rows[answer] / gold_n[template][answer]
            lines.append(
                f"| {answer} | {gold_n[template][answer]} | {' | '.join(f'{p:.2f}' for p in mean)} |"
            )
    logger.info("\n".join(lines))


if __name__ == "__main__":
    main()
