#!/usr/bin/env bash
# Launches a training config on every worker of a Google Cloud TPU VM pod.
#
#   bash scripts/tpu_pod.sh --tpu NAME --zone ZONE [--project PROJECT] \
#       [--repo_dir DIR] [--python PY] [--setup] [--dry-run] \
#       -- <flags for python -m experiments.train>
#
#   bash scripts/tpu_pod.sh --tpu my-v4-32 --zone us-central2-b --setup -- \
#       --config=configs/listops.py:softmax --workdir=gs://BUCKET/runs/listops
#
# --setup first copies this checkout to every worker (a `git archive` tarball
# of HEAD: uncommitted changes are NOT copied) and installs it there, in
# DIR/.venv (DIR defaults to ~/efficient on the workers), pinned by
# requirements.lock, plus jax[tpu] at the pinned jax version. The workers need
# Python >= 3.11 (jax 0.10 does); on images whose python3 is older, install one
# (e.g. `sudo apt-get install python3.11 python3.11-venv`) and pass
# --python python3.11.
#
# Then every worker runs the same command at once (ssh --worker=all):
#   cd DIR && EFFICIENT_DISTRIBUTED=1 .venv/bin/python -m experiments.train ...
# EFFICIENT_DISTRIBUTED=1 makes the trainer call jax.distributed.initialize(),
# which finds the other workers through the TPU metadata.
#
# The --workdir must be a gs:// bucket path that every worker can reach (the
# workers' local disks are not shared): checkpoints and results go there.
# Re-running the same command resumes from the latest checkpoint in it.
#
# --dry-run prints each command ("+ ..." lines, shell-quoted) and runs nothing;
# it does not need gcloud.
set -euo pipefail

prog="tpu_pod.sh"
# (read and printf are builtins: usage works on a bare PATH too)
read -r -d '' usage_text <<'EOF' || true
usage: bash scripts/tpu_pod.sh --tpu NAME --zone ZONE [--project PROJECT]
           [--repo_dir DIR] [--python PY] [--setup] [--dry-run]
           -- <args passed to python -m experiments.train>

  --tpu NAME       TPU VM (pod) name
  --zone ZONE      its zone, e.g. us-central2-b
  --project P      GCP project (default: gcloud's configured one)
  --repo_dir DIR   checkout on the workers (default: ~/efficient)
  --python PY      interpreter on the workers for the venv (default: python3)
  --setup          copy HEAD (git archive) to all workers and install it first
  --dry-run        print the commands ("+ ..." lines), run nothing

example:
  bash scripts/tpu_pod.sh --tpu my-v4-32 --zone us-central2-b -- \
      --config=configs/listops.py:softmax --workdir=gs://bucket/runs/listops
EOF
usage() {
  printf '%s\n' "$usage_text" >&2
  exit 2
}

# Repository root, with builtins only (the gcloud check below must work on a
# bare PATH).
case "${BASH_SOURCE[0]}" in
  */*) cd "${BASH_SOURCE[0]%/*}/.." ;;
  *) cd .. ;;
esac

tpu="" zone="" project="" repo_dir="~/efficient" python="python3"
setup=0 dry_run=0
need_value() {  # need_value OPTION "$#"
  if [ "$2" -lt 2 ]; then echo "$prog: $1 needs a value" >&2; usage; fi
}
while [ $# -gt 0 ]; do
  case "$1" in
    --tpu) need_value "$1" $#; tpu="$2"; shift 2 ;;
    --zone) need_value "$1" $#; zone="$2"; shift 2 ;;
    --project) need_value "$1" $#; project="$2"; shift 2 ;;
    --repo_dir) need_value "$1" $#; repo_dir="$2"; shift 2 ;;
    --python) need_value "$1" $#; python="$2"; shift 2 ;;
    --tpu=*) tpu="${1#*=}"; shift ;;
    --zone=*) zone="${1#*=}"; shift ;;
    --project=*) project="${1#*=}"; shift ;;
    --repo_dir=*) repo_dir="${1#*=}"; shift ;;
    --python=*) python="${1#*=}"; shift ;;
    --setup) setup=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "$prog: unknown option: $1 (training flags go after --)" >&2
       usage ;;
  esac
done
if [ -z "$tpu" ] || [ -z "$zone" ]; then
  echo "$prog: --tpu and --zone are required" >&2
  usage
fi
if [ $# -eq 0 ]; then
  echo "$prog: no training arguments after --" >&2
  usage
fi

if [ $dry_run -eq 0 ] && ! command -v gcloud >/dev/null 2>&1; then
  echo "$prog: error: gcloud not found on PATH (install the Google Cloud SDK: https://cloud.google.com/sdk/docs/install)" >&2
  exit 1
fi

# Runs a command, or with --dry-run prints it: "+ " and the words, each
# single-quoted unless it is plainly safe (readable, and copy-pastable).
run() {
  if [ $dry_run -eq 1 ]; then
    local word line="+" q="'" esc="'\\''"
    for word in "$@"; do
      if [[ "$word" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
        line+=" $word"
      else
        line+=" '${word//$q/$esc}'"
      fi
    done
    printf '%s\n' "$line"
  else
    "$@"
  fi
}

# DIR quoted for the remote shell, keeping a leading ~ unquoted so that it
# expands to the worker's home.
case "$repo_dir" in
  "~") rdir="~" ;;
  "~/"*) rdir="~/$(printf '%q' "${repo_dir#\~/}")" ;;
  *) rdir="$(printf '%q' "$repo_dir")" ;;
esac

gcloud_flags=(--zone="$zone")
[ -n "$project" ] && gcloud_flags+=(--project="$project")
gcloud_flags+=(--worker=all)

if [ $setup -eq 1 ]; then
  # The jax version: the exact pin in requirements.lock, else the version
  # after the first == / >= / ~= of pyproject's "jax..." requirement
  # ("jax>=0.10.2,<0.12" or "jax==0.10.2"), else none (plain jax[tpu]).
  jax_version=$(sed -nE '/^jax==[0-9]/{s/^jax==([0-9][0-9.]*).*/\1/p;q;}' \
    requirements.lock 2>/dev/null || true)
  if [ -z "$jax_version" ]; then
    jax_version=$(sed -nE '/"jax[[:space:]]*(==|>=|~=)[[:space:]]*[0-9]/{
      s/.*"jax[[:space:]]*(==|>=|~=)[[:space:]]*([0-9]([0-9.]*[0-9])?).*/\2/p;q;}' \
      pyproject.toml 2>/dev/null || true)
  fi
  jax_spec="jax[tpu]${jax_version:+==$jax_version}"

  sha=$(git rev-parse --short HEAD 2>/dev/null || echo HEAD)
  if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null || true)" ]; then
    echo "$prog: warning: uncommitted changes are not copied (git archive HEAD)" >&2
  fi
  tarball="${TMPDIR:-/tmp}/efficient-$sha.tar.gz"
  remote_tarball="/tmp/efficient-$sha.tar.gz"
  lock=""
  [ -f requirements.lock ] && lock=" -c requirements.lock"
  py=$(printf '%q' "$python")
  # One remote script; set -e stops it at the first failing step.
  install="set -e; mkdir -p $rdir; tar -xzf $remote_tarball -C $rdir"
  install+="; rm -f $remote_tarball; cd $rdir"
  install+="; if ! $py -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then"
  install+=" echo \"\$(hostname): $py is missing or older than Python 3.11 (see --python)\" >&2; exit 1; fi"
  install+="; [ -x .venv/bin/python ] || $py -m venv .venv"
  install+="; .venv/bin/pip install -q --upgrade pip"
  install+="; .venv/bin/pip install -q$lock -e ."
  install+="; .venv/bin/pip install -q$lock $(printf '%q' "$jax_spec")"

  run git archive --format=tar.gz -o "$tarball" HEAD
  run gcloud compute tpus tpu-vm scp --recurse "$tarball" \
    "$tpu:$remote_tarball" "${gcloud_flags[@]}"
  run gcloud compute tpus tpu-vm ssh "$tpu" "${gcloud_flags[@]}" \
    --command="$install"
  [ $dry_run -eq 1 ] || rm -f "$tarball"
fi

train_args=$(printf '%q ' "$@")
run gcloud compute tpus tpu-vm ssh "$tpu" "${gcloud_flags[@]}" \
  --command="cd $rdir && EFFICIENT_DISTRIBUTED=1 .venv/bin/python -m experiments.train ${train_args% }"
