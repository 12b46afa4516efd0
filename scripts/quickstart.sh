#!/usr/bin/env bash
# The default experiment: installs into .venv (created if missing), builds the
# quick ListOps data on first use, trains the LRA-harness Transformer with
# softmax attention (~6 min on 2 CPU cores), evaluates on the test split and
# prints the results table (curves in $WORKDIR/curves.png). Re-running resumes (or, once finished, just
# re-evaluates and prints the table).
#
#   bash scripts/quickstart.sh [extra --config.key=value flags]
#   WORKDIR=runs/other bash scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install.sh
workdir="${WORKDIR:-runs/quickstart}"
.venv/bin/python -m experiments.train \
  --config=configs/listops.py:softmax,variant=quick \
  --workdir="$workdir" "$@"
.venv/bin/python scripts/plot_metrics.py "$workdir"
.venv/bin/python scripts/results_table.py "$workdir/results.json"
