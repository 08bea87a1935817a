"""PEFT LoRA on VidLM: adapters on every projection (the ParameterNet expert bank included), routers
trained in full, merge equal to the unmerged adapter, and a merged safetensors checkpoint that loads
as a plain VidLM."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from vidllm.lm import FFN_CLASSES, VidLMForCausalLM, apply_lora, lora_config, merge_and_save, vidlm_config
from vidllm.lm.lora import ROUTER_NAMES

pytest.importorskip("peft")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads, and on shared, oversubscribed cores OpenMP's
    spin-waits made them ~100x slower here; restore the setting for other modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("ffn_type", list(FFN_CLASSES))
def test_lora_trains_routers_and_merges_to_identical_checkpoint(ffn_type, tmp_path):
    torch.manual_seed(0)
    model = VidLMForCausalLM(vidlm_config("vidlm-tiny", ffn_type=ffn_type)).eval()
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        base_logits = model(ids).logits

    # init_lora_weights=False: random A and B, so the adapter changes the function from the start
    peft_model = apply_lora(model, lora_config(model, r=4, init_lora_weights=False))
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable
    assert all("lora_" in n or any(r in n for r in ROUTER_NAMES) for n in trainable)
    has_routers = ffn_type != "dense"
    assert any(any(r in n for r in ROUTER_NAMES) for n in trainable) == has_routers
    if ffn_type == "parameternet":  # the 3D expert bank carries a per-expert adapter
        assert any("down_proj" in n and "lora_" in n for n in trainable)

    # one optimiser step: adapters and routers both move
    peft_model.train()
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.1)
    peft_model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    moved = {n for n, p in peft_model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])}
    assert any("lora_" in n for n in moved)
    if has_routers:
        assert any(any(r in n for r in ROUTER_NAMES) for n in moved)

    peft_model.eval()
    with torch.no_grad():
        adapted = peft_model(input_ids=ids).logits
    assert (adapted - base_logits).abs().max() > 1e-3

    merged = merge_and_save(peft_model, tmp_path)
    assert type(merged) is VidLMForCausalLM
    assert not any("lora_" in n or "modules_to_save" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted, atol=1e-5, rtol=1e-5)
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
        assert type(loaded) is VidLMForCausalLM
        torch.testing.assert_close(loaded(ids).logits, adapted, atol=1e-5, rtol=1e-5)
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["model.safetensors"]


def test_lora_dropout_is_refused_for_expert_banks():
    model = VidLMForCausalLM(vidlm_config("vidlm-tiny", ffn_type="parameternet"))
    with pytest.raises(ValueError, match="dropout"):
        lora_config(model, lora_dropout=0.1)
