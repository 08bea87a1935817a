#!/usr/bin/env bash
# The main job: the Gradio demo on the bundled default model, http://127.0.0.1:7860 (offline).
# Flags go to `vidllm demo` (for example --port 7861, --model PATH, --backend vllm).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export GRADIO_ANALYTICS_ENABLED=False
exec "$root/.venv/bin/vidllm" demo "$@"
