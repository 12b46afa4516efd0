#!/usr/bin/env bash
# The work prepared for a lent GPU (the `device` tool: about 15 minutes of
# device time a session, at most 10 a call, nothing installable there).
#
# Here, once (pip and the local data are needed):
#   bash scripts/gpu_session.sh kit
#     -> device_kit/wheels/*.whl   the packages the device image lacks
#        device_kit/listops_lra.npz.xz   LRA ListOps' 100k expressions (50 MB;
#        drawing them there would take 5-30 minutes of the lease)
# There (carry device_kit; each mode fits one call; outputs under $OUT):
#   bash scripts/gpu_session.sh kernels        # Pallas kernels compiled for the
#       GPU against their references (tests/pallas_kernels), then
#       scripts/bench_kernels.py (issue 4's figures) and
#       scripts/bench_attention.py (issue 3's sweep)
#   bash scripts/gpu_session.sh lra [METHOD...]  # LRA ListOps, the papers'
#       harness, 5,000 steps per method (default: all four), each run
#       time-boxed by $LRA_SECONDS (default 150); a run cut short keeps its
#       metrics.jsonl, which says exactly how far it got
#   DEADLINE=540 bash scripts/gpu_session.sh all [METHOD...]   # both in one
#       call: kernels (tests 120 s, benches 200 + 120 s) while ListOps builds on the
#       CPU, then LRA runs (default softmax nystrom) sharing the time left
# The device returns at most 8 files: there, run with OUT=/tmp/o
# BUNDLE=$OUT/gpu.tgz, and the script keeps one archive of /tmp/o up to date.
# Here again, GPU_SESSION_SMOKE=1 PY=.venv/bin/python runs either mode on tiny
# settings (the CPU dry run that tests/scripts/test_gpu_session.py does).
set -uo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
shift || true
KIT=device_kit
OUT=${OUT:-gpu_out}
PY=${PY:-python3}
SMOKE=${GPU_SESSION_SMOKE:-0}
export TFDS_DATA_DIR=${TFDS_DATA_DIR:-/tmp/tfds}
mkdir -p "$OUT"

WHEELS="tensorflow-datasets==4.9.10 grain==0.2.18 array-record==0.8.6
ml-collections==1.1.0 tensorboardX==2.6.5 importlib_resources==7.1.0
dm-tree==0.1.10 immutabledict==4.3.1 promise==2.3 simple_parsing==0.1.9
tensorflow-metadata==1.21.0 termcolor==3.3.0 toml==0.10.2 portpicker==1.6.0
docstring-parser==0.18.0 googleapis-common-protos==1.76.0"

kit() {
  mkdir -p "$KIT/wheels"
  for w in $WHEELS; do  # The device's Python is 3.12; promise has no wheel.
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$KIT/wheels" "$w" 2>/dev/null ||
      "$PY" -m pip wheel -q --no-deps -w "$KIT/wheels" "$w"
  done
  [ -f "$KIT/listops_lra.npz.xz" ] ||
    "$PY" -m efficient.data.listops --config=lra --export="$KIT/listops_lra.npz.xz"
  du -sh "$KIT"/*
}

bundle() {  # $BUNDLE: one .tgz of $OUT, rewritten after every stage (the
  # device brings back at most 8 files, and nothing a killed command meant
  # to write at its end).
  [ -z "${BUNDLE:-}" ] || tar czf "$BUNDLE" -C "$(dirname "$OUT")" "$(basename "$OUT")"
}

setup() {  # On the device: the carried wheels, this checkout on the path.
  if [ -d "$KIT/wheels" ] && [ "$SMOKE" = 0 ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target /tmp/site "$KIT"/wheels/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
  else
    export PYTHONPATH=$PWD
  fi
  { date -u; nvidia-smi --query-gpu=name,memory.total,driver_version \
      --format=csv 2>/dev/null; "$PY" -c "import jax, flax; print('jax', \
jax.__version__, 'flax', flax.__version__, jax.devices())"; } | tee "$OUT/device.txt"
}

kernels() {
  local select=() attention=()
  local bench=(--lengths 16384,4096,65536 --mra_tunings 8x2,4x3,2x2)
  if [ "$SMOKE" = 1 ]; then
    select=(-k "all_blocks_give_softmax")
    bench=(--lengths 256 --repeats 1 --methods softmax,mra_xla)
    attention=(--lengths 256 --repeats 1 --methods softmax,nystrom)
  fi
  timeout "${KERNEL_TEST_SECONDS:-240}" "$PY" -m pytest -v -p no:cacheprovider \
    tests/pallas_kernels "${select[@]}" > "$OUT/pallas_tests.log" 2>&1
  local code=$?
  bundle
  echo "pallas tests: exit $code ($(tail -1 "$OUT/pallas_tests.log" | sed "s/=//g; s/^ *//; s/ *$//"))"
  grep -E "^(FAILED|ERROR)" "$OUT/pallas_tests.log" | cut -c1-220 | head -12
  timeout "${BENCH_SECONDS:-300}" "$PY" scripts/bench_kernels.py "${bench[@]}" \
    --out "$OUT/bench_kernels_gpu.json" > "$OUT/bench_kernels.log" 2>&1
  code=$?
  bundle
  echo "bench_kernels: exit $code"
  tail -25 "$OUT/bench_kernels.log"
  # Issue 3's sweep (fp32, the four methods, 1024-16384) beside it.
  timeout "${BENCH_ATTENTION_SECONDS:-120}" "$PY" scripts/bench_attention.py \
    "${attention[@]}" --out "$OUT/bench_attention_gpu.json" \
    --plot "$OUT/bench_attention_gpu.png" > "$OUT/bench_attention.log" 2>&1
  code=$?
  bundle
  echo "bench_attention: exit $code"
  tail -8 "$OUT/bench_attention.log"
}

build_listops() {  # tfds ListOps (LRA from the carried file; smoke: drawn)
  local config=lra from=(--from_file="$KIT/listops_lra.npz.xz") t0=$SECONDS
  [ "$SMOKE" = 1 ] && { config=smoke; from=(); }
  "$PY" -m efficient.data.listops --config=$config --data_dir="$TFDS_DATA_DIR" \
    "${from[@]}" > "$OUT/listops_build.log" 2>&1 ||
    { tail -20 "$OUT/listops_build.log"; return 1; }
  echo "ListOps ($config) built in $((SECONDS - t0))s"
}

train_lra() {  # One time-boxed ListOps run per method, $LRA_SECONDS each.
  local suffix="" m t0 code workdir
  [ "$SMOKE" = 1 ] && suffix=",smoke"
  for m in "$@"; do
    workdir=${RUNS:-/tmp/runs}/lra_listops_$m
    t0=$SECONDS
    timeout "${LRA_SECONDS:-150}" "$PY" -m experiments.train \
      --config=configs/listops.py:$m$suffix --workdir=$workdir \
      --config.progress=False > "$OUT/lra_listops_$m.log" 2>&1
    code=$?
    mkdir -p "$OUT/lra_listops_$m"
    cp $workdir/{config.json,metrics.jsonl,results.json} "$OUT/lra_listops_$m/" 2>/dev/null
    bundle
    echo "$m: exit $code after $((SECONDS - t0))s; last record: $(tail -1 $workdir/metrics.jsonl 2>/dev/null | cut -c1-160)"
  done
}

lra() {
  local methods=("$@")
  [ ${#methods[@]} -eq 0 ] && methods=(softmax nystrom yoso mra)
  build_listops || exit 1
  train_lra "${methods[@]}"
}

everything() {  # kernels, then LRA runs sharing what is left of $DEADLINE s;
  # ListOps is built (niced, on the CPU) while the kernels use the GPU.
  local methods=("$@") t0=$SECONDS left
  [ ${#methods[@]} -eq 0 ] && methods=(softmax nystrom)
  nice -n 10 bash -c "$(declare -f build_listops); KIT=$KIT OUT=$OUT PY=$PY \
    SMOKE=$SMOKE TFDS_DATA_DIR=$TFDS_DATA_DIR build_listops" &
  local builder=$!
  KERNEL_TEST_SECONDS=${KERNEL_TEST_SECONDS:-120} \
    BENCH_SECONDS=${BENCH_SECONDS:-200} kernels
  wait $builder || exit 1
  left=$(( ${DEADLINE:-540} - (SECONDS - t0) - 10 ))
  LRA_SECONDS=$(( left / ${#methods[@]} )) train_lra "${methods[@]}"
}

case "$mode" in
  kit) kit ;;
  kernels) setup; kernels ;;
  lra) setup; lra "$@" ;;
  all) setup; everything "$@" ;;
  *) echo "usage: bash scripts/gpu_session.sh kit|kernels|lra|all [METHOD...]" >&2
     exit 2 ;;
esac
