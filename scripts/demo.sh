#!/usr/bin/env bash
# The main job: answer a question about a bundled example clip with the bundled default model.
# (Once the Gradio demo lands, this launches it: `vidllm demo`.)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
clip="$root/vidllm/assets/examples/videos/synthetic_validation_00002.mp4"
exec "$root/.venv/bin/vidllm" answer "$clip" "What color is the circle?" "$@"
