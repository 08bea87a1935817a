"""A short training run per FFN type on a tiny synthetic language: the loss must fall.

The language: a fixed random permutation ``succ`` of a 32-token vocabulary; every sequence starts at
a random token and continues ``t_{i+1} = succ(t_i)``. A model that learns the bigram table predicts
every token after the first, so the loss can fall from ln(32) ~ 3.5 towards 0.
"""

from __future__ import annotations

import pytest
import torch

from vidllm.lm import FFN_CLASSES, VidLMForCausalLM, vidlm_config

VOCAB, SEQ, BATCH, STEPS = 32, 16, 16, 200


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads, and on shared, oversubscribed cores OpenMP's
    spin-waits made them ~100x slower here; restore the setting for other modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batch(successor: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    tokens = [torch.randint(0, VOCAB, (BATCH,), generator=generator)]
    for _ in range(SEQ - 1):
        tokens.append(successor[tokens[-1]])
    return torch.stack(tokens, dim=1)


@pytest.mark.parametrize("ffn_type", list(FFN_CLASSES))
def test_training_lowers_the_loss(ffn_type):
    generator = torch.Generator().manual_seed(0)
    successor = torch.randperm(VOCAB, generator=generator)
    torch.manual_seed(0)
    config = vidlm_config("vidlm-tiny", ffn_type=ffn_type, vocab_size=VOCAB, num_hidden_layers=1)
    model = VidLMForCausalLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses, aux_losses = [], []
    for step in range(STEPS):
        model.set_training_step(step)
        ids = _batch(successor, generator)
        out = model(ids, labels=ids, use_cache=False)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.lm_loss.item())
        if out.aux_loss is not None:
            aux_losses.append(out.aux_loss.item())
    first, last = losses[0], sum(losses[-10:]) / 10
    assert first > 3.0  # ~ln(32): chance level
    assert last < 0.25 * first, (first, last)
    if ffn_type == "parameternet":  # the balancing loss took part all along
        assert len(aux_losses) == STEPS
        assert all(0 < a < float("inf") for a in aux_losses)
