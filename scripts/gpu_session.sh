#!/usr/bin/env bash
# The work prepared for a lent GPU (the `device` tool: about 15 minutes of
# device time a session, at most 10 a call, nothing installable there).
#
# Here, once (pip and the local data are needed):
#   bash scripts/gpu_session.sh kit
#     -> device_kit/wheels/*.whl   the packages the device image lacks
#        device_kit/listops_lra.npz.xz   LRA ListOps' 100k expressions (50 MB;
#        drawing them there would take 5-30 minutes of the lease; KIT_LISTOPS=0
#        skips it: with it the kit is over the 64 MiB a call carries)
#        device_kit/fashion-mnist/, device_kit/fid_classifier_16px_ds2.*
#        the Debian package's files (30 MB) and the cached 16x16 FID
#        classifier (scripts/train_fid_classifier.py --image_size=16
#        --downsample=2 first), for `models`
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
#   DEADLINE=540 bash scripts/gpu_session.sh models  # issue 4's kernel
#       benchmark on the quiet GPU while the images and videos are built,
#       then all at once on the GPU: issue 5's 16x16 2x2 (4 variants x
#       $SEEDS, default 0 1 2; seed 0 also DDPM-250 vs DPM-Solver++-20 on
#       2,000 samples), issue 7's video model (3,000 steps, then the SDEdit
#       check and the LightMotion evaluation) and a longer one
#       ($VIDEO_LONG_STEPS, default 12,000), beside the compiled Pallas
#       tests; everything stops by $DEADLINE s (the trainer saves on SIGTERM).
#       Video runs, and runs stopped before their end, come back as
#       $CKPT_OUT/<run>.tgz: their files and last checkpoint (resume with
#       the same train command on a workdir holding config.json and it).
#       VIDEO_DATA=static_bold trains them on the bold-background videos.
#       VIDEOS=0 skips them, BENCH_SECONDS=0 the benchmark and the kernel
#       tests (BENCH_LENGTHS picks its lengths): a second call on the warm
#       machine can add seeds.
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
CKPT_OUT=${CKPT_OUT:-$OUT}
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
  [ -f "$KIT/listops_lra.npz.xz" ] || [ "${KIT_LISTOPS:-1}" = 0 ] ||
    "$PY" -m efficient.data.listops --config=lra --export="$KIT/listops_lra.npz.xz"
  # The 16x16 FID classifier (scripts/train_fid_classifier.py, cached with
  # the data), so the model runs there share one instead of racing to train it.
  cp "$(fmnist_dir)"/fid_classifier_16px_ds2.* "$KIT/" 2>/dev/null
  # The Debian package's idx files (30 MB; `models` builds its data from them).
  mkdir -p "$KIT/fashion-mnist"
  cp "${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"/*.gz "$KIT/fashion-mnist/"
  du -sh "$KIT"/*
}

bundle() {  # $BUNDLE: one .tgz of $OUT, rewritten after every stage (the
  # device brings back at most 8 files, and nothing a killed command meant
  # to write at its end).
  # Video runs travel as files of their own (models: $CKPT_OUT/<run>.tgz).
  [ -z "${BUNDLE:-}" ] || { tar czf "$BUNDLE.tmp" --exclude="$(basename "$OUT")/video*" \
    -C "$(dirname "$OUT")" "$(basename "$OUT")" 2>/dev/null; mv "$BUNDLE.tmp" "$BUNDLE"; }
}

setup() {  # On the device: the carried wheels, this checkout on the path.
  if [ -d "$KIT/wheels" ] && [ "$SMOKE" = 0 ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target /tmp/site "$KIT"/wheels/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
    [ -d "$KIT/fashion-mnist" ] && export FASHION_MNIST_DIR=$PWD/$KIT/fashion-mnist
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
    cp $workdir/{config.json,metrics.jsonl,results.json,best.json} "$OUT/lra_listops_$m/" 2>/dev/null
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

fmnist_dir() {  # Where the full Fashion-MNIST build (and its classifiers) live.
  "$PY" -c "from efficient.data import fashion_mnist as f; \
print(f.FashionMnistDeb(config='full', data_dir='$TFDS_DATA_DIR').data_dir)"
}

build_images() {  # Fashion-MNIST and the synthetic videos, in parallel.
  local t0=$SECONDS video=(static moving) code=0
  [[ ${VIDEO_DATA:-static} == *_bold ]] && video=(static_bold moving_bold)
  [ "$SMOKE" = 1 ] && video=(smoke)
  "$PY" -m efficient.data.fashion_mnist --data_dir="$TFDS_DATA_DIR" \
    > "$OUT/build_fmnist.log" 2>&1 &
  local pids=($!)
  for c in "${video[@]}"; do
    "$PY" -m efficient.data.fmnist_video --config=$c --data_dir="$TFDS_DATA_DIR" \
      > "$OUT/build_video_$c.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait $p || code=1; done
  [ $code = 0 ] || { tail -5 "$OUT"/build_*.log; return 1; }
  [ "$SMOKE" = 1 ] || cp "$KIT"/fid_classifier_16px_ds2.* "$(fmnist_dir)/" 2>/dev/null
  echo "data built in $((SECONDS - t0))s"
}

left() {  # seconds to $END less $1, at least 1 (`timeout 0` never stops)
  local s=$(( END - $(date +%s) - ${1:-0} ))
  echo $(( s < 1 ? 1 : s ))
}

run_model() {  # CONFIG NAME [then: "sample" | "lightmotion" | "sdedit"...]:
  # trains to the end or until $END (SIGTERM: the trainer saves), then the
  # follow-ups in the time left; copies the run's small files to $OUT/NAME.
  local config=$1 name=$2 workdir=${RUNS:-/tmp/runs}/$2 t0=$SECONDS
  shift 2
  mkdir -p "$OUT/$name"
  timeout -s TERM -k 30 "$(left 60)" "$PY" -m experiments.train \
    --config="$config" --workdir="$workdir" --config.progress=False \
    > "$OUT/$name/train.log" 2>&1
  local trained=$?
  echo "$name: train exit $trained after $((SECONDS - t0))s; $(tail -1 \
    "$workdir/metrics.jsonl" 2>/dev/null | cut -c1-150)"
  for step in "$@"; do
    case $step in
      sample)  # issue 5: what the fast sampler costs, on 2,000 samples
        for s in "ddpm 250" "dpm_solver_pp 20"; do set -- $s
          timeout -s TERM "$(left 30)" "$PY" -m experiments.sample \
            --workdir="$workdir" --sampler=$1 --num_steps=$2 \
            --num_samples=${SAMPLE_N:-2000} >> "$OUT/$name/sample.log" 2>&1
        done ;;
      lightmotion)
        timeout -s TERM "$(left 30)" "$PY" -m experiments.lightmotion \
          --workdir="$workdir" > "$OUT/$name/lightmotion.log" 2>&1 ;;
      sdedit)
        timeout -s TERM "$(left 30)" "$PY" scripts/sdedit_check.py "$workdir" \
          --out "$OUT/$name/sdedit_check.png" > "$OUT/$name/sdedit.log" 2>&1 ;;
    esac
    echo "$name: $step exit $? at $((SECONDS - t0))s"
  done
  (cd "$workdir" && find . -maxdepth 2 \( -name "*.json" -o -name "*.jsonl" \
    -o -name "*.png" -o -name "*.gif" \) -size -4M -print0 |
    xargs -0 -r cp --parents -t "$OUT/$name/")
  local returned
  returned=$(ls "$CKPT_OUT"/*.tgz 2>/dev/null | wc -l)
  if { [[ $name == video* ]] || [ $trained != 0 ]; } && [ "$returned" -lt 7 ]; then
    # Its files and last checkpoint (to evaluate or resume elsewhere): one
    # file of its own beside the bundle (video strips and GIFs, and a
    # checkpoint of 7-15 MB, would crowd the bundle's 16 MiB); at most 7
    # such files with the bundle, since the device returns 8.
    local last
    last=$(ls "$workdir/checkpoints" 2>/dev/null | grep -E '^[0-9]+$' | sort -n | tail -1)
    tar czf "$CKPT_OUT/$name.tgz" -C "$(dirname "$OUT")" "$(basename "$OUT")/$name" \
      ${last:+-C "$workdir" config.json "checkpoints/$last"}
  fi
}

models() {  # Issue 4's benchmark on a quiet GPU while the data builds; then
  # issue 5's 16x16 2x2 (x $SEEDS) and issue 7's video model(s), all at once
  # on the one GPU (each process takes $MEM_FRACTION of its memory), beside
  # the compiled Pallas tests. Everything stops by $DEADLINE s.
  END=$(( $(date +%s) + ${DEADLINE:-540} ))
  local suffix="" seeds=(${SEEDS:-0 1 2}) videos=${VIDEOS:-1}
  local bench=(--lengths "${BENCH_LENGTHS:-16384,4096,65536}"
    --mra_tunings 8x2,4x3,2x2) video_long=${VIDEO_LONG_STEPS:-12000}
  local variants=(fmnist16_dit fmnist16_dit_tdln fmnist16_dimr fmnist16_dimr_adaln)
  local vdata=${VIDEO_DATA:-static} vname=video16_v
  [ "$vdata" = static ] || vname=video16_${vdata}
  if [ "$SMOKE" = 1 ]; then
    suffix=",smoke" seeds=(0) variants=(fmnist16_dit) video_long=0
    bench=(--lengths 256 --repeats 1 --methods softmax,mra_xla)
  fi
  build_images > "$OUT/build.log" 2>&1 &
  local builder=$!
  [ "${BENCH_SECONDS:-200}" -gt 0 ] &&
    timeout "${BENCH_SECONDS:-200}" "$PY" scripts/bench_kernels.py "${bench[@]}" \
      --out "$OUT/bench_kernels_gpu.json" > "$OUT/bench_kernels.log" 2>&1
  echo "bench_kernels: exit $? at $((SECONDS))s"; tail -22 "$OUT/bench_kernels.log"
  bundle
  wait $builder || { cat "$OUT/build.log"; return 1; }
  cat "$OUT/build.log"
  export XLA_PYTHON_CLIENT_MEM_FRACTION=${MEM_FRACTION:-0.05}
  local pids=()
  for v in "${variants[@]}"; do
    for s in "${seeds[@]}"; do
      local after=()
      [ "$s" = "${seeds[0]}" ] && after=(sample)
      run_model "configs/diffusion.py:$v,seed=$s$suffix" "${v}_s$s" "${after[@]}" &
      pids+=($!)
    done
  done
  if [ "$videos" = 1 ]; then
    run_model "configs/video.py:$vdata,size=16$suffix" "$vname" sdedit lightmotion &
    pids+=($!)
    if [ "$video_long" -gt 0 ]; then
      run_model "configs/video.py:$vdata,size=16,steps=$video_long" \
        "${vname}_${video_long}" sdedit lightmotion &
      pids+=($!)
    fi
  fi
  if [ "${BENCH_SECONDS:-200}" -gt 0 ]; then  # The kernels' compiled tests go
    # with their benchmark (a second call that skips it skips them too).
    local select=()
    [ "$SMOKE" = 1 ] && select=(-k "all_blocks_give_softmax")
    timeout "$(left 20)" "$PY" -m pytest -v -p no:cacheprovider \
      tests/pallas_kernels "${select[@]}" > "$OUT/pallas_tests.log" 2>&1
    echo "pallas tests: exit $? ($(tail -1 "$OUT/pallas_tests.log" | sed "s/=//g; s/^ *//; s/ *$//"))"
    grep -E "^(FAILED|ERROR)" "$OUT/pallas_tests.log" | cut -c1-220 | head -12
  fi
  while [ -n "$(jobs -r)" ]; do bundle; sleep 15; done
  for p in "${pids[@]}"; do wait $p; done
  bundle
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
  models) setup; models ;;
  *) echo "usage: bash scripts/gpu_session.sh kit|kernels|lra|all [METHOD...]|models" >&2
     exit 2 ;;
esac
