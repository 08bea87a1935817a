#!/usr/bin/env bash
# The main job: answer a question about the bundled clip with the bundled default model.
# (Once the Gradio demo lands, this launches it: `vidllm demo`.)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
clip="$root/vidllm/assets/clips/shapes.mp4"
exec "$root/.venv/bin/vidllm" answer "$clip" "What color is the square?" "$@"
