"""Can the default LM count the objects of a shape when it is handed clean object tokens?

The default model's count answers stay near 60% while colour and shape are near 95%: it knows
what each object is but not how many of a shape there are. This probe takes perception out of
the question. A fresh VidLM of the default preset's architecture (or another size) is trained,
from scratch, on sequences laid out as the video LLM's prompt is (the question, the visual
tokens, the question again, the answer), whose visual tokens are made up: each object of the
scene is shown by several tokens, each the sum of fixed random embeddings of the object's
colour and shape plus Gaussian noise, among background tokens, in random order. Colours are
distinct within a scene, as in the synthetic world, so the answer is the number of colours seen
among the tokens of the asked shape; scenes are drawn from their answer (uniform 0-4).

    python scripts/count_probe.py                        # the default LM, 2,000 steps
    python scripts/count_probe.py --set num_hidden_layers=6 --noise 1.0
    python scripts/count_probe.py --follow-ups 3   # 3 more count questions a sequence, after the tokens

It prints a table of held-out accuracy (overall and per right answer) against the count
questions seen so far, to set beside how many the video stage asks (about 6,700 in 4,000 steps:
``scripts/answer_prior.py``). If the default LM learns this to near 100%,
the count answers are lost in the visual tokens, not in the LM; if it cannot, the LM is.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np
import torch
import torch.nn.functional as F

from vidllm.data.synthetic.scene import COLORS, SHAPES, WorldConfig
from vidllm.lm import VidLMConfig, VidLMForCausalLM
from vidllm.train.presets import DEFAULT_LM

logger = logging.getLogger("count_probe")

MAX_COUNT = WorldConfig().max_objects  # the world's most objects, so its largest count answer


def draw_scene(rng: np.random.Generator) -> tuple[list[tuple[int, int]], int, int]:
    """``(objects, asked shape, answer)``: a scene of (colour, shape) objects drawn from a uniform
    answer as the world draws a count question (``answer`` objects of the asked shape, up to
    ``MAX_COUNT`` in all, the others of other shapes), colours distinct."""
    answer = int(rng.integers(0, MAX_COUNT + 1))
    shape = int(rng.integers(len(SHAPES)))
    total = int(rng.integers(max(1, answer), MAX_COUNT + 1))
    colors = rng.permutation(len(COLORS))[:total]
    others = [s for s in range(len(SHAPES)) if s != shape]
    shapes = [shape] * answer + [int(rng.choice(others)) for _ in range(total - answer)]
    return list(zip(colors.tolist(), shapes)), shape, answer


class Batcher:
    """Sequences of embeddings: [question(2)] [visual tokens] [question(2)] [answer slot], then
    ``follow_ups`` more count questions about the scene's other shapes, each as
    [previous answer] [question(2)] [answer slot] (asked after the tokens only)."""

    def __init__(self, hidden: int, num_visual: int, tokens_per_object: tuple[int, int], noise: float,
                 seed: int, follow_ups: int = 0):  # fmt: skip
        g = torch.Generator().manual_seed(seed)
        self.scale = scale = hidden**-0.5
        self.color = torch.randn(len(COLORS), hidden, generator=g) * scale
        self.shape = torch.randn(len(SHAPES), hidden, generator=g) * scale
        self.background = torch.randn(1, hidden, generator=g) * scale
        self.count_word = torch.randn(1, hidden, generator=g) * scale  # "How many ..."
        self.answer_slot = torch.randn(1, hidden, generator=g) * scale  # "Answer:"
        self.digits = torch.randn(MAX_COUNT + 1, hidden, generator=g) * scale  # answers fed back
        self.num_visual, self.tokens_per_object, self.noise = num_visual, tokens_per_object, noise
        self.follow_ups = min(follow_ups, len(SHAPES) - 1)

    def question(self, shape: int) -> torch.Tensor:
        return torch.stack([self.count_word[0], self.shape[shape]])

    def batch(self, rng: np.random.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embeds (B, L, H), answers (B, 1 + follow_ups))``; each answer's slot is at
        :meth:`slots`."""
        seqs, answers = [], []
        for _ in range(size):
            objects, asked, answer = draw_scene(rng)
            visual = [self.background[0]] * self.num_visual
            slots = rng.permutation(self.num_visual)
            used = 0
            for color, shape in objects:
                k = int(rng.integers(self.tokens_per_object[0], self.tokens_per_object[1] + 1))
                for slot in slots[used : used + k]:
                    visual[slot] = self.color[color] + self.shape[shape]
                used += k
            visual = torch.stack(visual)
            visual = visual + self.noise * self.scale * torch.randn(visual.shape)
            parts = [self.question(asked), visual, self.question(asked), self.answer_slot]
            row = [answer]
            others = [s for s in rng.permutation(len(SHAPES)).tolist() if s != asked][: self.follow_ups]
            for shape in others:
                parts += [self.digits[row[-1]][None], self.question(shape), self.answer_slot]
                row.append(sum(1 for _, s in objects if s == shape))
            seqs.append(torch.cat(parts))
            answers.append(row)
        return torch.stack(seqs), torch.tensor(answers)

    def slots(self) -> list[int]:
        """The positions whose logits predict the answers, in order."""
        first = 2 + self.num_visual + 2
        return [first + 4 * i for i in range(1 + self.follow_ups)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--visual-tokens", type=int, default=96)
    parser.add_argument("--tokens-per-object", type=int, nargs=2, default=(2, 12), metavar=("MIN", "MAX"))
    parser.add_argument("--noise", type=float, default=0.5, help="noise std as a multiple of an embedding's")
    parser.add_argument("--eval", type=int, default=1000, help="held-out sequences")
    parser.add_argument("--eval-every", type=int, default=250, help="steps between held-out evaluations")
    parser.add_argument("--follow-ups", type=int, default=0,
                        help="more count questions per sequence, about other shapes, after the tokens only")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="K=V", help="VidLMConfig fields (JSON values)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    lm = dict(DEFAULT_LM)
    for item in args.set:
        key, value = item.split("=", 1)
        lm[key] = json.loads(value)
    torch.manual_seed(args.seed)
    model = VidLMForCausalLM(VidLMConfig(vocab_size=MAX_COUNT + 1, **lm))
    hidden = model.config.hidden_size
    data = Batcher(
        hidden, args.visual_tokens, tuple(args.tokens_per_object), args.noise, args.seed, args.follow_ups
    )
    # held out: the plain layout (one question, asked before and after the tokens), as the test asks
    plain = Batcher(hidden, args.visual_tokens, tuple(args.tokens_per_object), args.noise, args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps, pct_start=0.05)
    rng = np.random.default_rng(args.seed)
    held_out = [plain.batch(np.random.default_rng([args.seed, 1, i]), 100) for i in range(args.eval // 100)]
    slots = data.slots()
    start = time.perf_counter()
    print(
        "| steps | count answers trained | held-out accuracy | "
        + " | ".join(f"answer {k}" for k in range(MAX_COUNT + 1))
        + " |"
    )
    print("|---|---|---|" + "---|" * (MAX_COUNT + 1))
    for step in range(1, args.steps + 1):
        model.train()
        embeds, answers = data.batch(rng, args.batch)
        logits = model(inputs_embeds=embeds).logits[:, slots]
        loss = F.cross_entropy(logits.flatten(0, 1), answers.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % args.eval_every == 0 or step == args.steps:
            total, per = evaluate(model, held_out)
            cells = " | ".join(f"{a:.1%}" for a in per)
            seen = step * args.batch * len(slots)
            print(f"| {step} | {seen} | {total:.1%} | {cells} |", flush=True)
            logger.info("step %d: loss %.3f (%.0f s)", step, loss.item(), time.perf_counter() - start)
    print(f"{' '.join(args.set) or 'default LM'}, noise {args.noise}, tokens per object "
          f"{args.tokens_per_object[0]}-{args.tokens_per_object[1]}, {args.visual_tokens} visual tokens, "
          f"{args.follow_ups} follow-up questions")  # fmt: skip


@torch.no_grad()
def evaluate(model, held_out) -> tuple[float, list[float]]:
    """Accuracy over ``held_out`` batches, and per right answer."""
    model.eval()
    right, total = np.zeros(MAX_COUNT + 1), np.zeros(MAX_COUNT + 1)
    for embeds, answers in held_out:
        pred = model(inputs_embeds=embeds).logits[:, -1].argmax(-1)
        answer = answers[:, 0]
        np.add.at(total, answer.numpy(), 1)
        np.add.at(right, answer.numpy(), (pred == answer).numpy())
    return right.sum() / total.sum(), list(right / np.maximum(total, 1))


if __name__ == "__main__":
    main()
