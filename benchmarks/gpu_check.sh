#!/usr/bin/env bash
# The GPU check: one command on a GPU machine; every step bounded by `timeout`; all results in one folder.
#
#   bash benchmarks/gpu_check.sh            # results in $OUT (default gpu_check/<date>); at most BUDGET (470) s
#
# On the lent H100 (no package registry; ../shared/gpu.md): first, from the project root on a machine with
# one, `bash ../shared/gpu/pack.sh pynvvideocodec==2.2.4 pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1
# packaging==26.3 pygments==2.21.0`, send .gpu/part0..N one per transfer running `bash .gpu/unpack.sh K`;
# with the last part, run this script. /tmp/site (the unpacked pack) goes on PYTHONPATH when it exists.
#
# Steps, most important first (a step that no longer fits in BUDGET is skipped and says so). Each is its own
# process under `timeout`, so a crash or a hang (the NVDEC path has never run) costs that step only:
#   env      nvidia-smi, driver, torch, CUDA, cuDNN, DALI, PyAV, decord, PyNvVideoCodec, NVDEC caps  -> env.txt
#   data     the vp9-g16 dataset that e2e, train and loader use (decode_speed.py --prepare-only)
#   pytest   pytest -m gpu (NVDEC vs its CPU twin, loaders on the GPU)                               -> log.txt
#   decode   benchmarks/decode_speed.py: strategies x formats (makes the other datasets under $WORK;
#            a failing row is recorded and the rest go on; the NVDEC rows run last)              -> decode.json
#   e2e      benchmarks/train_speed.py --data (vp9-g16): ResNet-18 and -34, bf16, channels-last,
#            real loader (--backend $BACKEND, default nvdec) vs synthetic; if that fails, the
#            same with dali (step e2e-dali)                                                       -> e2e.json
#   train    train.py, one epoch of ResNet-18 through the backend e2e ran                          -> train.csv
#   loader   benchmarks/loader_speed.py --configs dali-gpu,nvdec-gpu, train mode (a subprocess each) -> loader.json
# Everything a step prints goes to log.txt; summary.txt has one line per step and the key numbers. That is
# at most 7 files (the machine sends back 8). Datasets and runs stay in $WORK (default /tmp/gpu_check).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check/$(date +%Y%m%d-%H%M%S)}
WORK=${WORK:-/tmp/gpu_check}
BUDGET=${BUDGET:-470}             # seconds for all steps together
BACKEND=${BACKEND:-nvdec}         # the backend of the end-to-end and train.py steps
VIDEOS=${VIDEOS:-1024}            # train rows per format (hard links to 8 prepared 10 s sources; val: 1/8)
HEIGHT=${HEIGHT:-360}             # prepared height (240 as an option)
DECODE_ARGS=${DECODE_ARGS:---seconds 2 --warmup 1}  # 37 rows of ~4.5 s, plus making the datasets
mkdir -p "$OUT" "$WORK"
# The pack (/tmp/site) is built for the machine's own python3 and its CUDA torch; a .venv is used only
# without a pack (a .venv copied from a CPU machine has a CPU-only torch). PYTHON=... overrides both.
if [ -d /tmp/site ]; then
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
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
T0=$(date +%s)
DATA=$WORK/data/vp9-g16-${HEIGHT}p-$VIDEOS
DATA_ARGS=(--root "$WORK/data" --videos "$VIDEOS" --height "$HEIGHT")

# step NAME LIMIT CMD...: run CMD with at most LIMIT seconds (less if the budget is nearly spent); returns
# CMD's exit status (125 when skipped).
step() {
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET - ($(date +%s) - T0)))
  if ((left < 20)); then echo "$name: skipped (budget of ${BUDGET}s spent)" | tee -a "$SUMMARY"; return 125; fi
  ((limit > left)) && limit=$left
  echo "===== $name (limit ${limit}s): $*" >> "$LOG"
  local start=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  local note=""; ((rc == 124 || rc == 137)) && note=" (timed out)"
  echo "$name: exit $rc$note, $(($(date +%s) - start)) s" | tee -a "$SUMMARY"
  return $rc
}

step env 30 bash -c "nvidia-smi > '$OUT/env.txt' 2>&1; \
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >> '$OUT/env.txt' 2>&1; \
  $PY benchmarks/decode_speed.py --versions >> '$OUT/env.txt' 2>&1"
step data 60 "$PY" benchmarks/decode_speed.py --prepare-only --formats vp9-g16 "${DATA_ARGS[@]}"
step pytest 90 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests
step decode 210 "$PY" benchmarks/decode_speed.py "${DATA_ARGS[@]}" $DECODE_ARGS --json "$OUT/decode.json"
if [ -f "$DATA/train.csv" ]; then
  e2e() {  # e2e NAME BACKEND
    step "$1" 70 "$PY" benchmarks/train_speed.py --data "$DATA" --backend "$2" --loader-threads 14 \
      --arch resnet-18,resnet-34 --batch-size 64 --precision bf16 --channels-last --warmup 3 --iters 10 \
      --repeats 2 --json "$OUT/e2e.json"
  }
  E2E_BACKEND=$BACKEND
  if ! e2e e2e "$BACKEND" && [ "$BACKEND" != dali ]; then
    E2E_BACKEND=dali  # the new backend failed: today's end-to-end number is still worth having
    e2e e2e-dali dali
  fi
  RUN=$WORK/run-$E2E_BACKEND-$(date +%s)
  step train 45 "$PY" train.py --data "$DATA" --out "$RUN" --backend "$E2E_BACKEND" --arch resnet-18 \
    --batch-size 64 --epochs 1 --num-threads 14 --log-every 4
  [ -f "$RUN/metrics.csv" ] && cp "$RUN/metrics.csv" "$OUT/train.csv"
  step loader 45 "$PY" benchmarks/loader_speed.py --data "$DATA" --configs dali-gpu,nvdec-gpu --modes train \
    --batch-size 64 --threads 8 --rounds 1 --runs 1 --min-seconds 5 --warmup-epochs 1 --json "$OUT/loader.json"
else
  echo "e2e, train, loader: skipped (no dataset at $DATA: see the data step in log.txt)" | tee -a "$SUMMARY"
fi

# The key numbers, from the JSON files.
"$PY" - "$OUT" >> "$SUMMARY" 2>&1 <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def load(name):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None
if d := load("decode.json"):
    print("decode (clips/s | host CPU ms/clip | NVDEC % mean | frames/clip):")
    for r in d["rows"]:
        if "clips_per_s" in r:
            util = r.get("nvdec_util_mean")
            print(f"  {r['strategy']:13s} {r['format']:9s} {r['clips_per_s']:8.1f} | {r.get('host_cpu_ms_per_clip') or 0:6.3f} | "
                  f"{'' if util is None else f'{util:3.0f}'} | {r.get('frames_per_clip') or 0:.1f}")
        else:
            print(f"  {r['strategy']:13s} {r['format']:9s} {r.get('skipped') or r.get('error')}")
if d := load("e2e.json"):
    for r in d["rows"]:
        if "ratio" in r:
            print(f"e2e {r['arch']} {r['backend']} b{r['batch_size']} {r['precision']}: real {r['real_clips_per_s']:.1f} / "
                  f"synthetic {r['synthetic_clips_per_s']:.1f} clips/s = {r['ratio']:.3f}, data wait {r['data_wait_share']:.0%}")
try:
    lines = (out / "train.csv").read_text().splitlines()
    print("train.py:", lines[0], "|", lines[-1])
except (OSError, IndexError):
    pass
if d := load("loader.json"):
    for r in d["rows"]:
        print(f"loader {r['config']} {r['mode']}: {r['clips_per_s']:.1f} clips/s, CPU util {r['cpu_util']:.2f}")
EOF
echo "total $(($(date +%s) - T0)) s; results in $OUT: $(ls "$OUT" | tr '\n' ' ')" | tee -a "$SUMMARY"
cat "$SUMMARY"
