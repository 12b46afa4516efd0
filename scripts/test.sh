#!/usr/bin/env bash
# Installs the project with its test extras into .venv (created if missing) and
# runs the default test suite (everything not marked `slow`).
#
#   bash scripts/test.sh                 # default suite
#   bash scripts/test.sh -m slow         # the long runs
#   bash scripts/test.sh tests/train -x  # any pytest arguments
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install.sh test

args=("$@")
[ ${#args[@]} -eq 0 ] && args=(-m "not slow")
set +e
.venv/bin/python -m pytest "${args[@]}"
status=$?
set -e
if [ $status -eq 5 ]; then
  # pytest's "no tests collected": not a failure of the code, but say so.
  echo "scripts/test.sh: pytest collected no tests for: ${args[*]}"
  exit 0
fi
exit $status
