#!/usr/bin/env bash
# Launches a training config on every worker of a Cloud TPU VM pod.
#
#   bash scripts/tpu_pod.sh --tpu NAME --zone ZONE [--project P] \
#       [--repo_dir DIR] [--setup] [--dry-run] -- <experiments.train flags>
#
#   bash scripts/tpu_pod.sh --tpu my-v4-32 --zone us-central2-b --setup -- \
#       --config=configs/listops.py:softmax --workdir=gs://BUCKET/runs/listops
#
# --setup copies this checkout (git archive of HEAD) to every worker and
# installs it in DIR/.venv with jax[tpu] at the pinned jax version. Then every
# worker runs the same `python -m experiments.train ...` with
# EFFICIENT_DISTRIBUTED=1, which makes the trainer call
# jax.distributed.initialize() (workers find each other through the TPU
# metadata). The workdir must be a gs:// path that every worker can reach;
# re-running the same command resumes from its latest checkpoint.
# --dry-run prints the gcloud commands ("+ ..." lines) and runs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

tpu="" zone="" project="" repo_dir="~/efficient" setup=0 dry_run=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tpu) tpu="${2:-}"; shift 2 ;;
    --zone) zone="${2:-}"; shift 2 ;;
    --project) project="${2:-}"; shift 2 ;;
    --repo_dir) repo_dir="${2:-}"; shift 2 ;;
    --setup) setup=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "tpu_pod.sh: unknown option $1" >&2; usage ;;
  esac
done
[ -n "$tpu" ] && [ -n "$zone" ] && [ $# -gt 0 ] || usage

if [ $dry_run -eq 0 ] && ! command -v gcloud >/dev/null 2>&1; then
  echo "tpu_pod.sh: gcloud is not on PATH (install the Google Cloud SDK)" >&2
  exit 1
fi

common=(--zone="$zone" --worker=all)
[ -n "$project" ] && common+=(--project="$project")

run() {
  if [ $dry_run -eq 1 ]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

# Quote each training argument for the remote shell.
train_args=$(printf '%q ' "$@")

if [ $setup -eq 1 ]; then
  jax_version=$(grep -oE '^jax==[0-9.]+' requirements.lock | cut -d= -f3 || true)
  jax_spec="jax[tpu]${jax_version:+==$jax_version}"
  tarball="/tmp/efficient-$(git rev-parse --short HEAD 2>/dev/null || echo src).tar.gz"
  run git archive --format=tar.gz -o "$tarball" HEAD
  run gcloud compute tpus tpu-vm scp "$tarball" "$tpu:/tmp/efficient.tar.gz" "${common[@]}"
  run gcloud compute tpus tpu-vm ssh "$tpu" "${common[@]}" --command="mkdir -p $repo_dir && tar -xzf /tmp/efficient.tar.gz -C $repo_dir && cd $repo_dir && python3 -m venv .venv && .venv/bin/pip install -q -c requirements.lock -e . && .venv/bin/pip install -q '$jax_spec'"
fi

run gcloud compute tpus tpu-vm ssh "$tpu" "${common[@]}" --command="cd $repo_dir && EFFICIENT_DISTRIBUTED=1 .venv/bin/python -m experiments.train $train_args"
