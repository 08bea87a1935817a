"""The project tokenizer: byte-level BPE trained with ``tokenizers`` on the synthetic world's text.

The bundled model is trained from scratch, so its vocabulary is too: a byte-level BPE (the GPT-2
scheme: Radford et al., 2019, "Language Models are Unsupervised Multitask Learners", Sec. 2.2)
whose merges come from every question template with every slot filled, the multiple-choice
forms, the answers, the prompt template and frame timestamps. Byte-level means any text still
encodes (a question about a real clip falls back to short merges and bytes), digits are split
one by one (timestamps and counts share ten tokens), and the VideoLLM marker tokens
(:data:`vidllm.model.MARKERS`) are special tokens of the vocabulary from the start, so the LM's
embedding table never has to be resized.

The result is a ``transformers.PreTrainedTokenizerFast`` (``<s>`` prepended to every encoded
text, ``</s>`` ends an answer, ``<pad>`` pads), saved with the model by
``VideoLLM.save_pretrained`` and used by the LM and by the dual encoder's text tower alike.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator

logger = logging.getLogger(__name__)

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
#: Special tokens in id order: ids 0-3 are pad, bos, eos, unk; the VideoLLM markers follow.
BASE_SPECIALS = (PAD, BOS, EOS, UNK)

#: Words a question about a real video often uses; kept whole so such questions stay short.
GENERAL_WORDS = (
    "What is happening in the video? Who is in the video? Where does this take place? "
    "Describe the video. What animal is shown? What is the man doing? What is the person doing? "
    "Is there a rabbit, a bird, a car, a bike, a person, a tree, grass, water, the sky? "
    "What colors do you see? Which objects move? How many people are there? yes no"
)


def world_corpus(num_items: int = 1000, seed: int = 0) -> Iterator[str]:
    """Every text the model reads or writes about the synthetic world.

    All template questions with every slot filled (open and a multiple-choice form), every
    answer, the prompt template's words, timestamps, and the questions of ``num_items`` training
    items drawn from the world (their option orders).
    """
    from vidllm.data.synthetic import (
        COLORS,
        SHAPES,
        TEMPLATES,
        SyntheticVideoQA,
        answer_space,
        format_mc,
    )

    objects = [f"{c} {s}" for c in COLORS for s in SHAPES]
    for shape in SHAPES:
        yield TEMPLATES["color"].format(shape=shape)
        yield TEMPLATES["count"].format(shape=shape)
    for color in COLORS:
        yield TEMPLATES["shape"].format(color=color)
        for shape in SHAPES:
            yield TEMPLATES["direction"].format(color=color, shape=shape)
    for a, b in itertools.permutations(objects, 2):
        if a.split()[0] != b.split()[0]:  # colours are distinct within a scene
            yield TEMPLATES["first"].format(a=a, b=b)
    for template in TEMPLATES:
        space = answer_space(template)
        yield " ".join(space)
        yield format_mc(TEMPLATES["count"].format(shape="star"), space[:4])
    prompt = "\nQuestion: \nAnswer:"  # the prompt templates' words (VideoLLMConfig and the presets)
    for _ in range(8):  # BPE keeps merges seen at least twice: the prompt and these words are whole
        yield prompt
        yield GENERAL_WORDS
    yield " ".join(f"{t / 10:.1f}s" for t in range(0, 1000, 7))
    dataset = SyntheticVideoQA("train", num_samples=max(1, num_items), world_seed=seed)
    for i in range(num_items):
        _, question, _ = dataset.item(i)
        yield question.question
        yield question.mc_question
        yield f" {question.answer} {question.answer_letter}"


def train_tokenizer(
    texts: Iterable[str] | None = None,
    *,
    vocab_size: int = 512,
    markers: Iterable[str] | None = None,
    model_max_length: int = 4096,
):
    """Train the byte-level BPE on ``texts`` (default :func:`world_corpus`) and wrap it for transformers.

    Deterministic: the same texts and settings give the same vocabulary and merges.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if markers is None:
        from vidllm.model import MARKERS

        markers = MARKERS.values()
    markers = list(dict.fromkeys(markers))
    specials = [*BASE_SPECIALS, *markers]
    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(specials) + len(byte_alphabet):
        raise ValueError(
            f"vocab_size {vocab_size} leaves no room for merges: {len(specials)} special tokens and "
            f"{len(byte_alphabet)} bytes come first"
        )
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=byte_alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(texts if texts is not None else world_corpus(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=model_max_length,
        padding_side="right",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": markers})
    logger.info("trained a byte-level BPE of %d tokens (%d special)", len(tokenizer), len(specials))
    return tokenizer


__all__ = ["BASE_SPECIALS", "BOS", "EOS", "PAD", "UNK", "train_tokenizer", "world_corpus"]
