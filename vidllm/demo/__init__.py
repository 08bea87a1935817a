"""The Gradio demo (``app.py``, ``vidllm demo``); Gradio is imported only when the page is built."""

from vidllm.demo.core import (
    BACKEND_LABELS,
    DemoConfig,
    DemoError,
    DemoResult,
    ModelPool,
    RequestSettings,
    available_backends,
    run_request,
)
from vidllm.demo.examples import Example, bundled_examples
from vidllm.demo.ui import build_demo, launch

__all__ = [
    "BACKEND_LABELS",
    "DemoConfig",
    "DemoError",
    "DemoResult",
    "Example",
    "ModelPool",
    "RequestSettings",
    "available_backends",
    "build_demo",
    "bundled_examples",
    "launch",
    "run_request",
]
