"""VidLM as a transformers model: config, Auto registration, checkpoint layout, upcycling from Llama
and Qwen2, generation with the KV cache, streaming, inputs_embeds, safetensors round trips, and PEFT
LoRA (adapters on every projection, routers trained in full, merge equal to the unmerged adapter)."""

from __future__ import annotations

import threading

import pytest
import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    TextIteratorStreamer,
)

from vidllm.lm import (
    FFN_CLASSES,
    VIDLM_CONFIGS,
    VLLM_CPU_HEAD_SIZES,
    VidLMConfig,
    VidLMForCausalLM,
    VidLMModel,
    apply_lora,
    dense_routing,
    lora_config,
    merge_and_save,
    upcycle,
    vidlm_config,
)
from vidllm.lm.lora import ROUTER_NAMES

FFN_TYPES = list(FFN_CLASSES)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads, and on shared, oversubscribed cores OpenMP's
    spin-waits made them ~100x slower here; restore the setting for other modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(ffn_type: str, seed: int = 0, **overrides) -> VidLMForCausalLM:
    torch.manual_seed(seed)
    return VidLMForCausalLM(vidlm_config("vidlm-tiny", ffn_type=ffn_type, **overrides)).eval()


# ---------------------------------------------------------------- config


def test_config_defaults_and_named_configs_use_vllm_head_sizes():
    assert VidLMConfig().head_dim in VLLM_CPU_HEAD_SIZES
    for name in VIDLM_CONFIGS:
        assert vidlm_config(name).head_dim in VLLM_CPU_HEAD_SIZES, name


def test_config_per_layer_ffn_types_and_json_round_trip(tmp_path):
    config = vidlm_config(
        "vidlm-tiny", ffn_type=["versatile", "parameternet"], rope_parameters=None, rope_theta=5e5
    )
    assert config.layer_ffn_types == ["versatile", "parameternet"]
    assert config.rope_parameters["rope_theta"] == 5e5  # the legacy keyword lands in rope_parameters
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, VidLMConfig)
    assert loaded.to_diff_dict() == config.to_diff_dict()
    assert loaded.layer_ffn_types == config.layer_ffn_types


@pytest.mark.parametrize(
    "overrides",
    [
        {"ffn_type": "moe"},
        {"ffn_type": ["dense"]},  # one entry for two layers
        {"ffn_type": "versatile", "intermediate_size": 100},  # not 8 equal slices
        {"width_top_k": 9},
        {"max_loops": 0},
        {"gumbel_temperature_start": 0.05},  # below the end temperature
        {"num_key_value_heads": 3},
        {"head_dim": 31},
        {"parameternet_top_k": 0},
        {"aux_loss_weight": -1.0},
        {"hidden_act": "nope"},
        {"fusion_expectation": "hard"},
    ],
)
def test_config_rejects_inconsistent_values(overrides):
    with pytest.raises(StrictDataclassError):
        vidlm_config("vidlm-tiny", **overrides)


def test_auto_classes_resolve_to_vidlm():
    config = vidlm_config("vidlm-tiny")
    assert isinstance(AutoModelForCausalLM.from_config(config), VidLMForCausalLM)
    assert isinstance(AutoModel.from_config(config), VidLMModel)


def test_checkpoint_layout_is_llama_plus_routers():
    model = _model(["versatile", "parameternet"])
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    common = {
        "input_layernorm.weight": (64,),
        "post_attention_layernorm.weight": (64,),
        "self_attn.q_proj.weight": (64, 64),
        "self_attn.k_proj.weight": (32, 64),
        "self_attn.v_proj.weight": (32, 64),
        "self_attn.o_proj.weight": (64, 64),
        "mlp.gate_proj.weight": (128, 64),
        "mlp.up_proj.weight": (128, 64),
    }
    expected = {
        "model.embed_tokens.weight": (256, 64),
        "model.norm.weight": (64,),
        "lm_head.weight": (256, 64),
    }
    for layer in (0, 1):
        expected |= {f"model.layers.{layer}.{k}": v for k, v in common.items()}
    expected |= {
        "model.layers.0.mlp.down_proj.weight": (64, 128),
        "model.layers.0.mlp.width_router.weight": (8, 64),
        "model.layers.0.mlp.depth_router.weight": (4, 64),
        "model.layers.1.mlp.down_proj.weight": (8, 64, 128),
        "model.layers.1.mlp.router.weight": (8, 128),
    }
    assert shapes == expected


# ---------------------------------------------------------------- upcycling

SOURCE_SIZES = {
    key: VIDLM_CONFIGS["vidlm-tiny"][key]
    for key in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "max_position_embeddings",
    )
}


def _source(kind: str):
    torch.manual_seed(1)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**SOURCE_SIZES, attention_bias=True, rope_theta=20000.0))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**SOURCE_SIZES, tie_word_embeddings=True))
    with torch.no_grad():  # random init leaves biases and norms at 0 / 1; make them count
        for name, param in model.named_parameters():
            if name.endswith(("bias", "norm.weight", "layernorm.weight")):
                param.add_(torch.randn_like(param) * 0.1)
    return model.eval()


@pytest.mark.parametrize("ffn_type", FFN_TYPES)
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_upcycled_model_with_forced_routing_equals_source(kind, ffn_type):
    source = _source(kind)
    model = upcycle(source, ffn_type=ffn_type)
    ids = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        expected = source(ids).logits
        with dense_routing(model):
            logits = model(ids).logits
        routed = model(ids).logits
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    assert model.config.force_dense_routing is False  # restored on exit
    if ffn_type != "dense":  # unforced routing really is a different function
        assert (routed - expected).abs().max() > 1e-3


def test_upcycle_from_path_some_layers_and_rejects_unsupported(tmp_path):
    source = _source("qwen2")
    source.save_pretrained(tmp_path / "qwen2")
    model = upcycle(tmp_path / "qwen2", ffn_type="versatile", layers=[1])
    assert model.config.layer_ffn_types == ["dense", "versatile"]
    assert model.config.qkv_bias is True
    assert model.config.attention_bias is False
    assert model.model.layers[0].self_attn.o_proj.bias is None
    torch.testing.assert_close(
        model.model.layers[0].self_attn.q_proj.bias, source.model.layers[0].self_attn.q_proj.bias
    )
    with pytest.raises(ValueError, match="out of range"):
        upcycle(source, layers=[5])
    with pytest.raises(ValueError, match="mlp_bias"):
        upcycle(LlamaForCausalLM(LlamaConfig(**SOURCE_SIZES, mlp_bias=True)))


def test_upcycled_versatile_starts_with_one_loop():
    model = upcycle(_source("llama"), ffn_type="versatile")
    with torch.no_grad():
        out = model(torch.randint(0, 256, (1, 16)), output_routing=True)
    assert all(bool((r.loop_counts == 1).all()) for r in out.routing)


# ---------------------------------------------------------------- generation and I/O


def _greedy_without_cache(model, ids, steps):
    for _ in range(steps):
        with torch.no_grad():
            logits = model(ids, use_cache=False).logits[:, -1]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.mark.parametrize("ffn_type", FFN_TYPES)
def test_generate_with_kv_cache_equals_greedy_loop_without_cache(ffn_type):
    model = _model(ffn_type)
    ids = torch.randint(0, 256, (2, 7))
    generated = model.generate(ids, max_new_tokens=10, do_sample=False, min_new_tokens=10)
    assert torch.equal(generated, _greedy_without_cache(model, ids, 10))


@pytest.mark.parametrize("ffn_type", FFN_TYPES)
def test_inputs_embeds_match_input_ids(ffn_type):
    model = _model(ffn_type)
    ids = torch.randint(0, 256, (2, 9))
    embeds = model.get_input_embeddings()(ids)
    with torch.no_grad():
        torch.testing.assert_close(model(inputs_embeds=embeds).logits, model(ids).logits)
    from_embeds = model.generate(inputs_embeds=embeds, max_new_tokens=5, do_sample=False, min_new_tokens=5)
    from_ids = model.generate(ids, max_new_tokens=5, do_sample=False, min_new_tokens=5)
    assert torch.equal(from_embeds, from_ids[:, 9:])


def test_left_padded_batch_generates_like_single_prompts():
    model = _model("versatile", pad_token_id=0)
    short, long = torch.randint(1, 256, (1, 5)), torch.randint(1, 256, (1, 8))
    batch = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1), long])
    mask = torch.ones_like(batch)
    mask[0, :3] = 0
    out = model.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    assert torch.equal(
        out[0, 8:], model.generate(short, max_new_tokens=6, do_sample=False, min_new_tokens=6)[0, 5:]
    )
    assert torch.equal(
        out[1, 8:], model.generate(long, max_new_tokens=6, do_sample=False, min_new_tokens=6)[0, 8:]
    )


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("ffn_type", FFN_TYPES)
def test_right_padded_batch_scores_like_single_sequences(ffn_type, attn_implementation, monkeypatch):
    """Training's right-padded batches: each sequence's logits are those it has alone, and with
    SDPA they run its causal kernel with no padding mask."""
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(*args, **kwargs):
        calls.append((kwargs.get("attn_mask"), kwargs.get("is_causal")))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_sdpa)
    model = _model(ffn_type).eval()
    model.config._attn_implementation = attn_implementation
    lengths = (10, 7, 4)
    ids = torch.randint(1, 256, (len(lengths), max(lengths)))
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    with torch.no_grad():
        batch = model(input_ids=ids, attention_mask=mask, use_cache=False)
        batch_calls = list(calls)
        for i, n in enumerate(lengths):
            alone = model(input_ids=ids[i : i + 1, :n], use_cache=False)
            torch.testing.assert_close(batch.logits[i, :n], alone.logits[0], atol=1e-5, rtol=1e-5)
    if attn_implementation == "sdpa":
        assert batch_calls == [(None, True)] * model.config.num_hidden_layers
    else:
        assert batch_calls == []


def test_streaming_generation_yields_the_generated_text():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(256)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    model = _model("versatile")
    prompt = tokenizer("w5 w17 w99 w3", return_tensors="pt")
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
    result = {}
    thread = threading.Thread(
        target=lambda: result.update(
            ids=model.generate(
                **prompt, streamer=streamer, max_new_tokens=8, min_new_tokens=8, do_sample=False
            )
        )
    )
    thread.start()
    pieces = list(streamer)
    thread.join()
    assert len(pieces) > 1  # text arrived in increments, not once at the end
    assert "".join(pieces).split() == tokenizer.decode(result["ids"][0, 4:]).split()


@pytest.mark.parametrize("ffn_type", FFN_TYPES)
def test_save_load_round_trip_is_safetensors_and_identical(ffn_type, tmp_path):
    model = _model(ffn_type, tie_word_embeddings=ffn_type == "dense")
    model.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert "model.safetensors" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is VidLMForCausalLM
    ids = torch.randint(0, 256, (2, 11))
    with torch.no_grad():
        # Same weights bit for bit; logits may differ in the last ulp only because safetensors'
        # memory-mapped tensors need not be 64-byte aligned and the CPU matmul kernels then sum in
        # another order (measured: 7e-8 for the 3D expert bank, 0 after cloning the weights).
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=1e-6, rtol=0)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


# ---------------------------------------------------------------- PEFT LoRA


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
