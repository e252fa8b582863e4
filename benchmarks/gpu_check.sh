#!/usr/bin/env bash
# The GPU check: every GPU measurement in one command, the most valuable first, each step bounded by `timeout`.
#
#   OUT=DIR bash benchmarks/gpu_check.sh     # results in DIR (default gpu_check/<date>), all within BUDGET (420) s
#   STEPS="data pytest-360p" OUT=DIR bash benchmarks/gpu_check.sh   # only these steps (e.g. a second call)
#
# Needs CUDA torch, numpy, pandas, rich, matplotlib and nvidia-ml-py, plus one of two packs (docs/gpu_check.md
# says what they hold and how to make them for a machine without a package registry):
#   NVDEC pack  PyAV, PyNvVideoCodec 2.2.4, pytest: every NVDEC step runs; each DALI step is skipped, with one
#               line saying why (so one transfer and one call measure the NVDEC loader)
#   full pack   the same plus DALI (and decord): every step runs
# SITE (default /tmp/site, where the pack is unpacked) goes on PYTHONPATH when it exists.
#
# Steps, by value. Each is its own process under `timeout` (a crash or a hang costs that step only) and gets
# its limit or what is left of BUDGET, whichever is less; a step that no longer fits is skipped and says so.
#   env           nvidia-smi; driver, torch, CUDA, cuDNN, PyNvVideoCodec, DALI, PyAV versions; NVDEC limits, engines
#   data          the vp9-g16 dataset: 8 synthetic 10 s sources prepared at HEIGHT, hard-linked into VIDEOS train
#                 rows (VIDEOS/8 val), and its packet index
#   decode-nvdec  decode_speed.py on it: the NVDEC loader, latency native and low (clips/s, NVDEC utilisation,
#                 host CPU ms per clip), the host pass alone, the GPU augmentation alone
#   pytest        pytest -m gpu but tests/test_nvdec_gpu.py (NVDEC against its CPU twin at 192x144, the loaders and
#                 the augmentation on the GPU; a test of a backend whose package is missing skips)
#   pytest-360p   pytest -m gpu tests/test_nvdec_gpu.py (prepared 360-px H.264/HEVC/VP9 of several widths against
#                 the twin, to the bit: cropping, reuse after end of stream, reconfiguration, the loader), in a
#                 process of its own: a decoder that aborts it costs this step only
#   e2e-nvdec     train_speed.py --backend nvdec: ResNet-18 and -34, bf16, batch 64, channels-last, real clips
#                 against synthetic ones (the ratio, the data-wait share)
#   loader-nvdec  loader_speed.py nvdec-gpu, train and eval mode (clips/s, host CPU)
#   train         train.py, one epoch of ResNet-18 (clips/s, data-wait share): --backend nvdec, or dali when the
#                 NVDEC end-to-end step failed and DALI is there
#   decode-dali   decode_speed.py's DALI rows on the vp9-g16 dataset (as built, build_index=False, 4 pipelines)
#   e2e-dali      train_speed.py --backend dali
#   loader-dali   loader_speed.py dali-gpu, train mode
#   decode-FMT    for FMT in FORMATS (h264-g16 hevc-g16 vp9-g8 h264-g8 hevc-g8): its dataset, made when its step
#                 starts, then its NVDEC, host and (with DALI) DALI rows
# OUT gets 7 files: summary.txt (a line per step, then the key numbers: benchmarks/gpu_report.py), log.txt
# (all the steps print), env.txt, decode.json, e2e.json, loader.json (each benchmark's rows, from all its steps)
# and train.csv. The JSON files are rewritten after every step, and summary.txt is finished also when this
# script is stopped (INT, TERM). Datasets, runs and the per-step files stay in WORK (default /tmp/gpu_check).
#
# Settings (environment): OUT, WORK, BUDGET, STEPS, VIDEOS (1024), HEIGHT (360), ROW_ARGS (decode_speed.py's
# timing per row), FORMATS, SITE, PYTHON (the interpreter: python3 with a pack, else .venv/bin/python). WORK
# keeps the datasets: on the same machine a second run reuses them.
# Test hooks: tests/test_gpu_check.py runs this script on a CPU with PYTHON set to a fake interpreter that runs,
# fails, hangs or crashes each command as the test says, and checks summary.txt and that every later step still
# ran. It shortens the limits with LIMIT_MAX (s, caps every step's limit), KILL_AFTER (10 s: the grace from
# timeout's SIGTERM to its SIGKILL) and MIN_STEP (20 s: less left of BUDGET skips a step). A real run sets none.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check/$(date +%Y%m%d-%H%M%S)}
WORK=${WORK:-/tmp/gpu_check}
BUDGET=${BUDGET:-420}            # seconds for all steps together (the last may overrun it by KILL_AFTER)
STEPS=${STEPS:-}                 # names of the steps to run, space-separated; empty: all
VIDEOS=${VIDEOS:-1024}
HEIGHT=${HEIGHT:-360}
ROW_ARGS=${ROW_ARGS:---seconds 3 --warmup 2}
FORMATS=${FORMATS:-h264-g16 hevc-g16 vp9-g8 h264-g8 hevc-g8}
SITE=${SITE:-/tmp/site}
LIMIT_MAX=${LIMIT_MAX:-600}
KILL_AFTER=${KILL_AFTER:-10}
MIN_STEP=${MIN_STEP:-20}         # seconds: a step with less than this left of BUDGET is skipped
THREADS=14                       # decoder threads; NVDEC rounds up to a multiple of its engines (7 on an H100)
read -ra ROW <<< "$ROW_ARGS"
mkdir -p "$OUT" "$WORK"
# A pack is built for the machine's own python3 (and its CUDA torch); a .venv is used only without a pack (one
# copied from a CPU machine has a CPU-only torch).
if [ -d "$SITE" ]; then
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
  PY=${PYTHON:-python3}
elif [ -x .venv/bin/python ]; then
  PY=${PYTHON:-.venv/bin/python}
else
  PY=${PYTHON:-python3}
fi
LOG=$OUT/log.txt
SUMMARY=$OUT/summary.txt
: > "$LOG"
: > "$SUMMARY"
RES=$(mktemp -d "$WORK/results.XXXXXX")  # this run's per-step files (gpu_report.py merges them into OUT)
T0=$(date +%s)
DATA=$WORK/data/vp9-g16-${HEIGHT}p-$VIDEOS
DATA_ARGS=(--root "$WORK/data" --videos "$VIDEOS" --height "$HEIGHT")
FAILED=0
CURRENT=""       # the running step's timeout process, and its name (for the INT/TERM handler)
CURRENT_NAME=""

note() {  # a line of the summary (also in the log and on stdout)
  echo "$*" | tee -a "$SUMMARY" >> "$LOG"
  echo "$*"
}

skip() {  # skip NAME REASON
  note "$1: skipped ($2)"
}

# step NAME LIMIT CMD...: CMD under `timeout` with at most LIMIT seconds (less when BUDGET is nearly spent),
# its output in the log; then OUT's JSON files are rebuilt. Returns CMD's exit status (125: skipped).
step() {
  local name=$1 limit=$2; shift 2
  if [ -n "$STEPS" ] && [[ " $STEPS " != *" $name "* ]]; then skip "$name" "not in STEPS"; return 125; fi
  local left=$((BUDGET - ($(date +%s) - T0)))
  if ((left < MIN_STEP)); then skip "$name" "budget of ${BUDGET}s spent"; return 125; fi
  ((limit > left)) && limit=$left
  ((limit > LIMIT_MAX)) && limit=$LIMIT_MAX
  echo "===== $name (limit ${limit}s): $*" >> "$LOG"
  local start rc why=""
  start=$(date +%s)
  # In the background, so that `wait` returns at once when INT or TERM arrives (bash runs a trap only after
  # the foreground command ends); timeout signals CMD's whole process group (loader and prepare workers too).
  timeout --kill-after="$KILL_AFTER" "$limit" "$@" < /dev/null >> "$LOG" 2>&1 &
  CURRENT=$! CURRENT_NAME=$name
  wait "$CURRENT"
  rc=$?
  CURRENT="" CURRENT_NAME=""
  case $rc in
    0) ;;
    124) why=" (timed out after ${limit}s)" ;;
    137) why=" (killed: it outlived SIGTERM by ${KILL_AFTER}s after the ${limit}s limit, or ran out of memory)" ;;
    134) why=" (aborted: SIGABRT, e.g. an exception thrown inside a decoder library)" ;;
    139) why=" (crashed: segmentation fault)" ;;
    *) ((rc > 128)) && why=" (killed by signal $((rc - 128)))" ;;
  esac
  ((rc != 0)) && FAILED=$((FAILED + 1))
  note "$name: exit $rc$why, $(($(date +%s) - start)) s"
  "$PY" benchmarks/gpu_report.py collect "$RES" "$OUT" >> "$LOG" 2>&1
  return $rc
}

finish() {  # on exit, however it comes: stop the running step, then the key numbers
  trap - EXIT INT TERM
  if [ -n "$CURRENT" ]; then
    kill -TERM "$CURRENT" 2>/dev/null  # timeout passes it on, and SIGKILLs KILL_AFTER s later if need be
    wait "$CURRENT" 2>/dev/null
    note "$CURRENT_NAME: stopped (the check was interrupted)"
  fi
  "$PY" benchmarks/gpu_report.py summary "$RES" "$OUT" >> "$SUMMARY" 2>> "$LOG" \
    || echo "(benchmarks/gpu_report.py failed: see log.txt)" >> "$SUMMARY"
  note "total $(($(date +%s) - T0)) s, $FAILED step(s) failed; results in $OUT: $(ls "$OUT" | tr '\n' ' ')"
  echo "----- $SUMMARY"
  cat "$SUMMARY"
}
trap finish EXIT
trap 'note "interrupted by a signal"; exit 130' INT TERM

# missing MODULE: why python cannot import MODULE (the error's last line), nothing when it can.
missing() {
  local err rc
  err=$(timeout 60 "$PY" -c "import $1" 2>&1 > /dev/null)
  rc=$?
  ((rc == 0)) && return 0
  err=${err%$'\n'}
  err=${err##*$'\n'}
  echo "${err:-python -c 'import $1' exited $rc}"
}
NO_DALI=$(missing nvidia.dali)
NO_NVDEC=$(missing PyNvVideoCodec)
NO_PYTEST=$(missing pytest)
note "gpu_check $(git rev-parse --short HEAD 2>/dev/null || echo '(no git)'), python $PY, budget ${BUDGET}s;\
 DALI: ${NO_DALI:-yes}; PyNvVideoCodec: ${NO_NVDEC:-yes}; pytest: ${NO_PYTEST:-yes}"
no_data() { [ ! -f "$DATA/train.csv" ]; }
NO_DATA="no dataset at $DATA: the data step failed (log.txt)"

step env 45 bash -c '{ nvidia-smi; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,mig.mode.current \
  --format=csv; "$0" benchmarks/decode_speed.py --versions --json "$2"; } > "$1" 2>&1' \
  "$PY" "$OUT/env.txt" "$RES/versions.json"
step data 90 "$PY" benchmarks/decode_speed.py --prepare-only --formats vp9-g16 "${DATA_ARGS[@]}"

# ---- the NVDEC path
if no_data; then
  skip decode-nvdec "$NO_DATA"
else  # (without PyNvVideoCodec its rows say so; the host pass and the augmentation still run)
  step decode-nvdec 60 "$PY" benchmarks/decode_speed.py "${DATA_ARGS[@]}" --formats vp9-g16 \
    --strategies nvdec,nvdec-low,host,augment --threads "$THREADS" "${ROW[@]}" --json "$RES/decode-nvdec.json"
fi
# pytest -v: each test's result is in the log as it ends, so one that kills the process is named there too.
if [ -n "$NO_PYTEST" ]; then
  skip pytest "pytest not importable: $NO_PYTEST"
  skip pytest-360p "pytest not importable: $NO_PYTEST"
else
  step pytest 90 "$PY" -m pytest -m gpu -v -p no:cacheprovider --junitxml="$RES/pytest.xml" \
    --ignore=tests/test_nvdec_gpu.py tests
  step pytest-360p 90 "$PY" -m pytest -m gpu -v -p no:cacheprovider --junitxml="$RES/pytest-360p.xml" \
    tests/test_nvdec_gpu.py
fi
E2E_NVDEC=125
if no_data || [ -n "$NO_NVDEC" ]; then
  why=${NO_NVDEC:+PyNvVideoCodec not importable: $NO_NVDEC}
  skip e2e-nvdec "${why:-$NO_DATA}"
  skip loader-nvdec "${why:-$NO_DATA}"
else
  step e2e-nvdec 100 "$PY" benchmarks/train_speed.py --data "$DATA" --backend nvdec --loader-threads "$THREADS" \
    --arch resnet-18,resnet-34 --batch-size 64 --precision bf16 --channels-last --warmup 3 --iters 10 --repeats 2 \
    --json "$RES/e2e-nvdec.json"
  E2E_NVDEC=$?
  step loader-nvdec 60 "$PY" benchmarks/loader_speed.py --data "$DATA" --configs nvdec-gpu --modes train,eval \
    --batch-size 64 --threads "$THREADS" --rounds 1 --runs 1 --min-seconds 5 --warmup-epochs 1 --json "$RES/loader-nvdec.json"
fi
TRAIN_BACKEND=nvdec
# (125: skipped, e.g. not in STEPS, which says nothing about the NVDEC path)
((E2E_NVDEC != 0 && E2E_NVDEC != 125)) && [ -z "$NO_DALI" ] && TRAIN_BACKEND=dali
if no_data; then
  skip train "$NO_DATA"
elif [ "$TRAIN_BACKEND" = nvdec ] && [ -n "$NO_NVDEC" ]; then
  skip train "neither PyNvVideoCodec ($NO_NVDEC) nor DALI ($NO_DALI) is importable"
else
  RUN=$WORK/run-$TRAIN_BACKEND-$(date +%s)
  step train 60 "$PY" train.py --data "$DATA" --out "$RUN" --backend "$TRAIN_BACKEND" --arch resnet-18 \
    --batch-size 64 --epochs 1 --workers "$THREADS" --log-every 4
  if [ -f "$RUN/metrics.csv" ]; then
    cp "$RUN/metrics.csv" "$RES/train-$TRAIN_BACKEND.csv"
    cp "$RUN/metrics.csv" "$OUT/train.csv"
  fi
fi

# ---- the DALI path (today's baseline)
if [ -n "$NO_DALI" ]; then
  for name in decode-dali e2e-dali loader-dali; do skip "$name" "DALI not importable: $NO_DALI"; done
elif no_data; then
  for name in decode-dali e2e-dali loader-dali; do skip "$name" "$NO_DATA"; done
else
  step decode-dali 60 "$PY" benchmarks/decode_speed.py "${DATA_ARGS[@]}" --formats vp9-g16 \
    --strategies dali,dali-noindex,dali-k4 --threads "$THREADS" "${ROW[@]}" --json "$RES/decode-dali.json"
  step e2e-dali 80 "$PY" benchmarks/train_speed.py --data "$DATA" --backend dali --loader-threads "$THREADS" \
    --arch resnet-18,resnet-34 --batch-size 64 --precision bf16 --channels-last --warmup 3 --iters 10 --repeats 2 \
    --json "$RES/e2e-dali.json"
  step loader-dali 45 "$PY" benchmarks/loader_speed.py --data "$DATA" --configs dali-gpu --modes train \
    --batch-size 64 --threads "$THREADS" --rounds 1 --runs 1 --min-seconds 5 --warmup-epochs 1 --json "$RES/loader-dali.json"
fi

# ---- the other storage formats
STRATEGIES=nvdec,nvdec-low,host
if [ -z "$NO_DALI" ]; then
  STRATEGIES+=,dali,dali-noindex,dali-k4
else
  note "DALI rows of $FORMATS: skipped (DALI not importable: $NO_DALI)"
fi
for fmt in $FORMATS; do
  step "decode-$fmt" 75 "$PY" benchmarks/decode_speed.py "${DATA_ARGS[@]}" --formats "$fmt" \
    --strategies "$STRATEGIES" --threads "$THREADS" "${ROW[@]}" --json "$RES/decode-$fmt.json"
done
((FAILED == 0))
