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

# The import hook that mends torchvision must be in site-packages (see vidllm/_compat).
"$venv/bin/python" -c "import torchvision, timm, open_clip, peft, transformers" \
  || { echo "setup_env: the installed packages do not import; see the error above" >&2; exit 1; }

echo "$stamp" > "$stamp_file"
echo "setup_env: .venv ready for '$profile'"
