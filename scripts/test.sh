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
# Default: everything not `slow`, on 2 workers (pytest-xdist), one test file
# per worker at a time so module fixtures are built once. Most of the
# suite's time is single-threaded XLA compilation, so 2 workers on 2 cores
# roughly halve it.
[ ${#args[@]} -eq 0 ] && args=(-m "not slow" -n 2 --dist loadfile)
# One persistent XLA compilation cache for the whole run (fresh each run, so
# nothing stale carries over): the CLI tests start many child processes that
# compile the same smoke programs (tests/train/test_trainer_cli.py: 270 s ->
# 236 s alone). Children inherit it through the environment.
if [ -z "${JAX_COMPILATION_CACHE_DIR:-}" ]; then
  export JAX_COMPILATION_CACHE_DIR="$(mktemp -d -t efficient-jax-cache.XXXXXX)"
  trap 'rm -rf "$JAX_COMPILATION_CACHE_DIR"' EXIT
fi
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
