"""Configuration of the VidLM decoder: a Llama-style causal LM whose FFN is chosen per layer.

The attention, norm and rotary fields follow ``LlamaConfig`` (and vLLM's reading of it: ``qkv_bias``
overrides the q/k/v bias the way vLLM's Llama does, which is how a Qwen2 checkpoint, biased q/k/v
and unbiased o_proj, is expressed). The FFN fields are ours; see ``vidllm.lm.ffn`` for the layers
and the papers they come from.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from huggingface_hub.dataclasses import strict
from transformers.activations import ACT2FN
from transformers.configuration_utils import PreTrainedConfig
from transformers.modeling_rope_utils import RopeParameters

#: FFN variants a layer can use; ``vidllm.lm.ffn.FFN_CLASSES`` maps each to its module class.
FFN_TYPES: tuple[str, ...] = ("dense", "versatile", "parameternet")

#: Head sizes vLLM's CPU attention backend accepts (REFERENCE.md); named configs keep to these so
#: the same checkpoints serve through vLLM unchanged.
VLLM_CPU_HEAD_SIZES: tuple[int, ...] = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


@strict
class VidLMConfig(PreTrainedConfig):
    r"""Configuration of [`VidLMForCausalLM`].

    Args:
        vocab_size (`int`): Number of tokens of the vocabulary (rows of ``embed_tokens`` and ``lm_head``).
        hidden_size (`int`): Width of the residual stream.
        intermediate_size (`int`): Hidden width of the SwiGLU FFN. VersatileFFN cuts it into
            ``num_width_experts`` equal slices, so it must divide evenly when a layer is ``versatile``.
        num_hidden_layers (`int`): Number of decoder layers.
        num_attention_heads (`int`): Query heads per layer.
        num_key_value_heads (`int`, *optional*): Key/value heads (grouped-query attention); defaults to
            ``num_attention_heads``. Must divide ``num_attention_heads``.
        head_dim (`int`, *optional*): Size of one attention head; defaults to
            ``hidden_size // num_attention_heads``. Keep it to a size vLLM's attention supports
            (``VLLM_CPU_HEAD_SIZES``) when the model is to be served by vLLM.
        hidden_act (`str`): Activation of the gated FFN (``"silu"`` gives SwiGLU).
        max_position_embeddings (`int`): Longest sequence the rotary tables are prepared for.
        initializer_range (`float`): Standard deviation of the normal initialisation of weights.
        rms_norm_eps (`float`): Epsilon of the RMS norms.
        use_cache (`bool`): Whether ``forward`` returns the key/value cache by default.
        pad_token_id (`int`, *optional*): Padding token id.
        bos_token_id (`int`, *optional*): Beginning-of-sequence token id.
        eos_token_id (`int` or `list[int]`, *optional*): End-of-sequence token id(s).
        tie_word_embeddings (`bool`): Share ``lm_head.weight`` with ``model.embed_tokens.weight``.
        rope_parameters (`dict`, *optional*): Rotary embedding parameters in the transformers format
            (``{"rope_type": "default", "rope_theta": 10000.0}``, or a scaled type such as ``llama3``);
            a legacy ``rope_theta=`` keyword is folded into it.
        attention_bias (`bool`): Bias on ``o_proj``, and on ``q/k/v_proj`` unless ``qkv_bias`` says otherwise.
        qkv_bias (`bool`, *optional*): Bias on ``q/k/v_proj`` when it differs from ``attention_bias``
            (Qwen2: ``qkv_bias=True, attention_bias=False``). vLLM's Llama reads the same attribute.
        attention_dropout (`float`): Dropout on attention probabilities in training.
        ffn_type (`str` or `list[str]`): FFN variant of every layer (one of ``FFN_TYPES``), or one per layer.
        num_width_experts (`int`): VersatileFFN: number of virtual experts (slices of the hidden dim).
        width_top_k (`int`): VersatileFFN: virtual experts each token uses in the width path.
        max_loops (`int`): VersatileFFN: the most times the depth path applies the FFN to a token.
        gumbel_temperature_start (`float`): VersatileFFN: Gumbel-softmax temperature at training step 0.
        gumbel_temperature_end (`float`): VersatileFFN: the floor the temperature anneals to.
        gumbel_temperature_decay (`float`): VersatileFFN: per-step factor of the exponential anneal,
            ``tau(step) = max(end, start * decay**step)``; the default reaches 0.1 after about 24k steps
            (the official schedule).
        fusion_expectation (`str`): VersatileFFN: what ``E[loops]`` in the fusion weight
            ``(max_loops - E[loops]) / max_loops`` is taken over. ``"sample"`` (official code): the
            loop-count distribution the depth path actually used, i.e. the straight-through hard
            Gumbel sample in training and the argmax at inference, so ``E[loops]`` is the token's
            loop count. ``"soft"``: ``softmax(depth_logits)``, a fractional expectation.
        versatile_aux_loss_weight (`float`): VersatileFFN: weight of an optional Switch-style
            load-balancing loss over the virtual experts (the official code uses none: 0).
        num_parameternet_experts (`int`): ParameterNet: experts of the down projection.
        parameternet_top_k (`int`): ParameterNet: experts per token (the paper uses 1).
        aux_loss_weight (`float`): ParameterNet: weight of the Switch load-balancing loss (paper: 0.01).
        force_dense_routing (`bool`): Override every router so each FFN computes exactly its dense
            SwiGLU: VersatileFFN uses all slices with weight 1, one loop and fusion weight 1;
            ParameterNet gives its top-1 expert weight 1. An upcycled model then reproduces its source.
    """

    model_type: ClassVar[str] = "vidlm"
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["past_key_values"]
    base_model_tp_plan: ClassVar[dict[str, str]] = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
    }
    base_model_pp_plan: ClassVar[dict[str, tuple[list[str], list[str]]]] = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }

    vocab_size: int = 32000
    hidden_size: int = 1024
    intermediate_size: int = 2816
    num_hidden_layers: int = 16
    num_attention_heads: int = 16
    num_key_value_heads: int | None = 4
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    tie_word_embeddings: bool = False
    rope_parameters: RopeParameters | dict | None = None
    attention_bias: bool = False
    qkv_bias: bool | None = None
    attention_dropout: float | int = 0.0

    ffn_type: str | list[str] = "dense"
    num_width_experts: int = 8
    width_top_k: int = 2
    max_loops: int = 4
    gumbel_temperature_start: float = 5.0
    gumbel_temperature_end: float = 0.1
    gumbel_temperature_decay: float = 0.99984
    fusion_expectation: Literal["sample", "soft"] = "sample"
    versatile_aux_loss_weight: float = 0.0
    num_parameternet_experts: int = 8
    parameternet_top_k: int = 1
    aux_loss_weight: float = 0.01
    force_dense_routing: bool = False

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and self.num_attention_heads > 0:
            self.head_dim = self.hidden_size // self.num_attention_heads
        super().__post_init__(**kwargs)

    @property
    def layer_ffn_types(self) -> list[str]:
        """The FFN variant of each layer, ``ffn_type`` expanded to a list."""
        if isinstance(self.ffn_type, str):
            return [self.ffn_type] * self.num_hidden_layers
        return list(self.ffn_type)

    @property
    def qkv_bias_enabled(self) -> bool:
        """Whether q/k/v projections carry a bias (``qkv_bias`` if set, else ``attention_bias``)."""
        return self.attention_bias if self.qkv_bias is None else self.qkv_bias

    def gumbel_temperature_at(self, step: int) -> float:
        """Gumbel-softmax temperature at a training step: ``max(end, start * decay**step)``."""
        if step < 0:
            raise ValueError(f"training step must be >= 0, got {step}")
        # log-space avoids underflow of decay**step for very long runs
        value = self.gumbel_temperature_start * math.exp(step * math.log(self.gumbel_temperature_decay))
        return max(self.gumbel_temperature_end, value)

    def validate_architecture(self):
        """Shapes: positive sizes, heads that group evenly, a head size rotary embeddings can rotate."""
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_key_value_heads <= 0 or self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_key_value_heads ({self.num_key_value_heads}) must be positive and divide "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.head_dim <= 0 or self.head_dim % 2:
            raise ValueError(
                f"head_dim must be a positive even number (rotary halves it), got {self.head_dim}"
            )
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not a transformers activation")
        if self.rms_norm_eps <= 0:
            raise ValueError(f"rms_norm_eps must be positive, got {self.rms_norm_eps}")
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"attention_dropout must be in [0, 1), got {self.attention_dropout}")

    def validate_ffn(self):
        """FFN choice per layer and the router settings of the variants that are used."""
        types = self.layer_ffn_types
        if len(types) != self.num_hidden_layers:
            raise ValueError(
                f"ffn_type lists {len(types)} layers but num_hidden_layers is {self.num_hidden_layers}"
            )
        unknown = sorted(set(types) - set(FFN_TYPES))
        if unknown:
            raise ValueError(f"unknown ffn_type {unknown}; choose from {list(FFN_TYPES)}")
        if not 1 <= self.width_top_k <= self.num_width_experts:
            raise ValueError(
                f"width_top_k ({self.width_top_k}) must be in [1, num_width_experts={self.num_width_experts}]"
            )
        if "versatile" in types and self.intermediate_size % self.num_width_experts:
            raise ValueError(
                f"intermediate_size ({self.intermediate_size}) must be divisible by num_width_experts "
                f"({self.num_width_experts}): VersatileFFN's virtual experts are equal slices of it"
            )
        if self.max_loops < 1:
            raise ValueError(f"max_loops must be >= 1, got {self.max_loops}")
        if not 0 < self.gumbel_temperature_end <= self.gumbel_temperature_start:
            raise ValueError(
                "Gumbel temperatures need 0 < end <= start, got "
                f"start={self.gumbel_temperature_start}, end={self.gumbel_temperature_end}"
            )
        if self.fusion_expectation not in ("sample", "soft"):
            raise ValueError(
                f"fusion_expectation must be 'sample' or 'soft', got {self.fusion_expectation!r}"
            )
        if not 0 < self.gumbel_temperature_decay <= 1:
            raise ValueError(
                f"gumbel_temperature_decay must be in (0, 1], got {self.gumbel_temperature_decay}"
            )
        if not 1 <= self.parameternet_top_k <= self.num_parameternet_experts:
            raise ValueError(
                f"parameternet_top_k ({self.parameternet_top_k}) must be in "
                f"[1, num_parameternet_experts={self.num_parameternet_experts}]"
            )
        for name in ("aux_loss_weight", "versatile_aux_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


__all__ = ["FFN_TYPES", "VLLM_CPU_HEAD_SIZES", "VidLMConfig"]
