"""FFN variants of the VidLM decoder: equations against naive references, inference FLOPs against
the formulas, routing decisions, gradients into the routers, auxiliary losses, and a short training
run per variant on a tiny synthetic language."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from vidllm.lm import FFN_CLASSES, VidLMForCausalLM, vidlm_config
from vidllm.lm.ffn import switch_load_balancing_loss
from vidllm.lm.ffn.common import linear_in_slice, linear_out_slice
from vidllm.lm.modeling_vidlm import VidLMRMSNorm

HIDDEN, INTER = 64, 128


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matmuls gain nothing from threads, and on shared, oversubscribed cores OpenMP's
    spin-waits made them ~100x slower here; restore the setting for other modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _ffn(ffn_type: str, **overrides):
    config = vidlm_config("vidlm-tiny", ffn_type=ffn_type, **overrides)
    torch.manual_seed(0)
    mlp = FFN_CLASSES[ffn_type](config, 0)
    for p in mlp.parameters():
        torch.nn.init.normal_(p, std=0.1)
    if hasattr(mlp, "depth_router"):  # spread the loop counts so every count occurs
        torch.nn.init.normal_(mlp.depth_router.weight, std=1.0)
    norm = VidLMRMSNorm(HIDDEN)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    return mlp.eval(), norm


def _swiglu(mlp, u, rows=slice(None)):
    """Reference SwiGLU restricted to hidden units ``rows`` (all by default)."""
    gate = u @ mlp.gate_proj.weight[rows].T
    up = u @ mlp.up_proj.weight[rows].T
    return (F.silu(gate) * up) @ mlp.down_proj.weight[:, rows].T


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


# Inference FLOPs per call (FLOPs = 2 x MACs; norms and element-wise ops are not matmuls).
def _dense_flops(config, routing, tokens):
    return tokens * 6 * config.hidden_size * config.intermediate_size


def _versatile_flops(config, routing, tokens):
    hidden, inter = config.hidden_size, config.intermediate_size
    experts, loops, top_k = config.num_width_experts, config.max_loops, config.width_top_k
    routers = tokens * 2 * hidden * (experts + loops)
    # only the k chosen slices, and only for tokens whose width path has a non-zero weight
    width = int((routing.fusion_weight > 0).sum()) * top_k * 6 * hidden * (inter // experts)
    depth = int(routing.loop_counts.sum()) * 6 * hidden * inter  # each token exactly its loop count
    return routers + width + depth


def _parameternet_flops(config, routing, tokens):
    hidden, inter = config.hidden_size, config.intermediate_size
    return tokens * (6 * hidden * inter + 2 * inter * config.num_parameternet_experts)


FLOP_FORMULAS = {"dense": _dense_flops, "versatile": _versatile_flops, "parameternet": _parameternet_flops}


def test_every_ffn_type_has_a_flop_formula():
    assert set(FLOP_FORMULAS) == set(FFN_CLASSES)


@pytest.mark.parametrize("ffn_type", list(FFN_CLASSES))
def test_inference_flops_match_formula(ffn_type):
    mlp, norm = _ffn(ffn_type)
    x = torch.randn(3, 40, HIDDEN)
    with torch.no_grad():
        measured = _flops(lambda: mlp(x, norm))
        _, _, routing = mlp(x, norm)
    assert measured == FLOP_FORMULAS[ffn_type](mlp.config, routing, 120)


def test_versatile_width_path_computes_two_of_eight_slices():
    mlp, _ = _ffn("versatile")
    u = torch.randn(50, HIDDEN)
    logits = torch.randn(50, 8)
    top, index = logits.topk(2)
    with torch.no_grad():
        width = _flops(lambda: mlp._width(u, index, top.softmax(-1)))
        full = _flops(lambda: mlp.ffn(u))
    assert width * 4 == full  # 2 of 8 slices: a quarter of the dense FFN's FLOPs


def test_versatile_loop_counts_are_the_router_argmax_and_early_stoppers_stop():
    mlp, norm = _ffn("versatile")
    x = torch.randn(2, 60, HIDDEN)
    with torch.no_grad():
        _, _, routing = mlp(x, norm)
        expected = mlp.depth_router(x).argmax(-1) + 1
    assert torch.equal(routing.loop_counts, expected)
    assert set(routing.loop_counts.unique().tolist()) == {1, 2, 3, 4}
    # FLOPs of the depth path follow the per-token counts, not max_loops for every token
    assert int(routing.loop_counts.sum()) < 4 * 120
    torch.testing.assert_close(routing.fusion_weight, (4 - routing.loop_counts.float()) / 4)


@pytest.mark.parametrize("fusion_expectation", ["sample", "soft"])
def test_versatile_inference_matches_naive_reference(fusion_expectation):
    mlp, norm = _ffn("versatile", fusion_expectation=fusion_expectation)
    x = torch.randn(2, 30, HIDDEN)
    with torch.no_grad():
        delta, _, routing = mlp(x, norm)
        expected = torch.empty_like(x)
        s = INTER // 8
        for b in range(2):
            for t in range(30):
                xt = x[b, t]
                h = xt
                for _ in range(int(routing.loop_counts[b, t])):  # depth: recurse, re-normalising
                    h = h + _swiglu(mlp, norm(h))
                top, index = mlp.width_router(xt).topk(2)
                width = sum(
                    w * _swiglu(mlp, norm(xt), slice(int(e) * s, (int(e) + 1) * s))
                    for w, e in zip(top.softmax(-1), index)
                )
                if fusion_expectation == "soft":
                    loops = (mlp.depth_router(xt).softmax(-1) * torch.arange(1.0, 5.0)).sum()
                else:
                    loops = routing.loop_counts[b, t].float()
                m = (4 - loops) / 4
                expected[b, t] = m * width + (1 - m) * (h - xt)
    torch.testing.assert_close(delta, expected, atol=1e-5, rtol=1e-5)


def test_versatile_training_matches_reference_for_sampled_loops():
    mlp, norm = _ffn("versatile")
    mlp.train()
    x = torch.randn(1, 20, HIDDEN)
    torch.manual_seed(3)
    delta, _, routing = mlp(x, norm)
    with torch.no_grad():
        for t in range(20):
            h = x[0, t]
            for _ in range(int(routing.loop_counts[0, t])):
                h = h + _swiglu(mlp, norm(h))
            depth = h - x[0, t]
            m = routing.fusion_weight[0, t]
            width = sum(
                w * _swiglu(mlp, norm(x[0, t]), slice(int(e) * 16, (int(e) + 1) * 16))
                for w, e in zip(routing.width_weights[0, t], routing.width_experts[0, t])
            )
            torch.testing.assert_close(delta[0, t], m * width + (1 - m) * depth, atol=1e-5, rtol=1e-5)


def test_parameternet_matches_naive_reference():
    mlp, norm = _ffn("parameternet")
    x = torch.randn(2, 25, HIDDEN)
    with torch.no_grad():
        delta, aux, routing = mlp(x, norm)
        u = norm(x)
        inner = F.silu(u @ mlp.gate_proj.weight.T) * (u @ mlp.up_proj.weight.T)
        probs = (inner @ mlp.router.weight.T).softmax(-1)
        p, e = probs.max(-1)
        expected = torch.einsum("bti,btoi->bto", inner, mlp.down_proj.weight[e]) * p.unsqueeze(-1)
    torch.testing.assert_close(delta, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(routing.expert_index[..., 0], e)
    assert aux is not None
    assert aux > 0


@pytest.mark.parametrize("ffn_type", list(FFN_CLASSES))
def test_forced_dense_routing_is_the_dense_ffn(ffn_type):
    mlp, norm = _ffn(ffn_type, force_dense_routing=True)
    if ffn_type == "parameternet":
        with torch.no_grad():  # upcycled state: every expert the dense down projection
            mlp.down_proj.weight.copy_(mlp.down_proj.weight[0].expand_as(mlp.down_proj.weight))
    x = torch.randn(2, 10, HIDDEN)
    with torch.no_grad():
        delta, _, routing = mlp(x, norm)
        u = norm(x)
        down = mlp.down_proj.weight if ffn_type != "parameternet" else mlp.down_proj.weight[0]
        expected = (F.silu(u @ mlp.gate_proj.weight.T) * (u @ mlp.up_proj.weight.T)) @ down.T
    torch.testing.assert_close(delta, expected, atol=1e-6, rtol=1e-5)
    if ffn_type == "versatile":
        assert torch.equal(routing.loop_counts, torch.ones(2, 10, dtype=torch.long))
        assert torch.equal(routing.fusion_weight, torch.ones(2, 10))
        assert routing.width_experts.shape == (2, 10, 8)


@pytest.mark.parametrize("ffn_type", [t for t in FFN_CLASSES if t != "dense"])
def test_gradients_reach_routers_in_training(ffn_type):
    # no auxiliary loss: the depth router's only gradient path is the straight-through Gumbel-softmax
    model = VidLMForCausalLM(vidlm_config("vidlm-tiny", ffn_type=ffn_type, aux_loss_weight=0.0)).train()
    model.set_training_step(100)
    ids = torch.randint(0, 256, (2, 16))
    out = model(ids, labels=ids)
    assert out.aux_loss is None
    out.loss.backward()
    routers = {n: p.grad for n, p in model.named_parameters() if "router" in n}
    assert routers
    for name, grad in routers.items():
        assert grad is not None, name
        assert torch.isfinite(grad).all(), name
        assert grad.abs().sum() > 0, name


def test_gumbel_temperature_follows_the_training_step():
    from transformers import TrainerControl, TrainerState

    from vidllm.lm import GumbelTemperatureCallback

    model = VidLMForCausalLM(vidlm_config("vidlm-tiny", ffn_type="versatile"))
    assert model.set_training_step(0) == 5.0
    mid = model.set_training_step(10_000)
    assert 0.1 < mid < 5.0
    assert model.model.layers[1].mlp.gumbel_temperature == mid
    assert model.set_training_step(1_000_000) == 0.1
    # the Trainer callback reaches the layers through a wrapper too
    wrapper = torch.nn.Sequential(model)
    GumbelTemperatureCallback().on_step_begin(
        None, TrainerState(global_step=10_000), TrainerControl(), model=wrapper
    )
    assert all(layer.mlp.gumbel_temperature == mid for layer in model.model.layers)


@pytest.mark.parametrize(
    ("ffn_type", "overrides", "router"),
    [("parameternet", {}, "router"), ("versatile", {"versatile_aux_loss_weight": 0.01}, "width_router")],
)
def test_aux_losses_are_nonzero_and_differentiable(ffn_type, overrides, router):
    model = VidLMForCausalLM(vidlm_config("vidlm-tiny", ffn_type=ffn_type, **overrides)).train()
    ids = torch.randint(0, 256, (2, 16))
    out = model(ids, labels=ids)
    assert out.aux_loss > 0
    torch.testing.assert_close(out.loss, out.lm_loss + out.aux_loss)
    weights = [p for n, p in model.named_parameters() if n.endswith(f"mlp.{router}.weight")]
    grads = torch.autograd.grad(out.aux_loss, weights)
    assert all(g.abs().sum() > 0 for g in grads)


def test_dense_model_has_no_aux_loss():
    model = VidLMForCausalLM(vidlm_config("vidlm-tiny"))
    ids = torch.randint(0, 256, (1, 8))
    out = model(ids, labels=ids)
    assert out.aux_loss is None
    torch.testing.assert_close(out.loss, out.lm_loss)


def test_switch_loss_is_one_when_balanced_and_ignores_masked_tokens():
    probs = torch.full((8, 4), 0.25)
    selected = torch.arange(8).remainder(4).unsqueeze(-1)
    torch.testing.assert_close(switch_load_balancing_loss(probs, selected), torch.tensor(1.0))
    collapsed = torch.zeros(8, 1, dtype=torch.long)
    peaked = torch.tensor([[0.7, 0.1, 0.1, 0.1]]).expand(8, 4)
    assert switch_load_balancing_loss(peaked, collapsed) > 1.0
    mask = torch.tensor([True] * 4 + [False] * 4)
    both = torch.cat([probs[:4], peaked[4:]])
    chosen = torch.cat([selected[:4], collapsed[4:]])
    torch.testing.assert_close(
        switch_load_balancing_loss(both, chosen, mask), switch_load_balancing_loss(probs[:4], selected[:4])
    )


def test_sliced_linear_applies_unmerged_lora():
    peft = pytest.importorskip("peft")

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(12, 16, bias=False)

    holder = peft.get_peft_model(
        Holder(), peft.LoraConfig(r=2, target_modules=["proj"], init_lora_weights=False)
    ).base_model.model
    x = torch.randn(5, 12)
    with torch.no_grad():
        full = holder.proj(x)
        torch.testing.assert_close(linear_out_slice(holder.proj, x, 4, 8), full[:, 4:8])
        parts = sum(linear_in_slice(holder.proj, x[:, a : a + 4], a, a + 4) for a in range(0, 12, 4))
    torch.testing.assert_close(parts, full, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- training run

VOCAB, SEQ, BATCH, STEPS = 32, 16, 16, 200


def _successor_batch(successor: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    tokens = [torch.randint(0, VOCAB, (BATCH,), generator=generator)]
    for _ in range(SEQ - 1):
        tokens.append(successor[tokens[-1]])
    return torch.stack(tokens, dim=1)


@pytest.mark.parametrize("ffn_type", list(FFN_CLASSES))
def test_training_lowers_the_loss(ffn_type):
    """A fixed random permutation ``succ`` of a 32-token vocabulary; sequences start at a random
    token and continue ``t_{i+1} = succ(t_i)``. Learning the bigram table predicts every label, so
    200 AdamW steps take the loss from ln(32) ~ 3.5 towards 0."""
    generator = torch.Generator().manual_seed(0)
    successor = torch.randperm(VOCAB, generator=generator)
    torch.manual_seed(0)
    config = vidlm_config("vidlm-tiny", ffn_type=ffn_type, vocab_size=VOCAB, num_hidden_layers=1)
    model = VidLMForCausalLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses, aux_losses = [], []
    for step in range(STEPS):
        model.set_training_step(step)
        ids = _successor_batch(successor, generator)
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
