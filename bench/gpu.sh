#!/usr/bin/env bash
# One GPU check: every GPU figure the project claims, in one command, in <= 8 minutes.
#
#   bench/gpu.sh              on a machine with a CUDA GPU: runs the steps below and appends
#                             their rows to bench/RESULTS.md (each bench script records its own)
#   bench/gpu.sh --dry-run    the same steps on the CPU with tiny sizes and nothing recorded:
#                             proves the command runs end to end where no GPU is lent (all 6 steps
#                             passed in 831 s on the shared 2-core CPU machine, 2026-12-01)
#
# Steps (each under its own time limit; a failed step is reported and the next one runs):
#   1. raw vs pipeline encode, ViT-B-32, random weights, fp16 (autocast on CUDA)  bench/encode.py
#   2. raw vs pipeline encode, ViT-L-14, random weights, fp16                      bench/encode.py
#   3. distributed ingest, one GPU embed worker, vs the raw encoder (ViT-B-32)     bench/ingest.py
#   4. the OCR stage on the GPU (onnxruntime CUDA provider; needs onnxruntime-gpu) bench/stages.py
#   5. query batching: in-process vs queue, batching on vs off (device auto)       bench/query.py
#   6. decode/resize outside the encoder's process vs raw                          bench/decode.py
# Never run by the tests. Logs: $GPU_LOG_DIR (default: a temporary folder), printed at the end.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; fi
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
LOGS="${GPU_LOG_DIR:-$(mktemp -d -t imgsearch-gpu-XXXXXX)}"
mkdir -p "$LOGS"
START=$(date +%s)

if [[ $DRY == 1 ]]; then
  DEVICE=cpu; RECORD=(); NOTE="dry run"
  ENC_B=(--images 8 --batch-size 8 --repeats 1); ENC_L=(--images 2 --batch-size 2 --repeats 1)
  INGEST=(--images 8 --batch-size 8 --repeats 1 --overhead-batches 2)
  OCR=(--images 2 --sizes 480x360 --threads 1 --no-baseline)
  QUERY=(--vectors 500 --concurrency 1 --batch-concurrency 2 --requests 10)
  DECODE=(--images 8 --batch-size 8 --workers 2)
  LIMITS=(300 300 300 300 300 300)
else
  DEVICE=cuda; RECORD=(--record); NOTE="GPU check (bench/gpu.sh)"
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "bench/gpu.sh: torch sees no CUDA GPU here; run 'bench/gpu.sh --dry-run' on a CPU machine" >&2
    exit 2
  fi
  ENC_B=(--images 4096 --batch-size 256 --repeats 2); ENC_L=(--images 2048 --batch-size 128 --repeats 2)
  INGEST=(--images 4096 --batch-size 256 --repeats 1 --overhead-batches 20)
  OCR=(--images 64 --sizes 480x360,1024x768 --threads 1 --no-baseline --batch 32)
  QUERY=(--vectors 20000 --concurrency 1,32 --batch-concurrency 16 --requests 200)
  DECODE=(--images 1024 --batch-size 256 --workers 8)
  LIMITS=(60 90 150 75 60 45)  # seconds; 480 in all = 8 minutes
fi
"$PY" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" || true

FAILED=()
step() {  # step NAME LIMIT_S command...
  local name="$1" limit="$2"; shift 2
  local began; began=$(date +%s)
  echo "== $name (limit ${limit}s)"
  if timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1; then
    echo "   ok in $(( $(date +%s) - began ))s"
  else
    echo "   FAILED (exit $?) after $(( $(date +%s) - began ))s; last lines of $LOGS/$name.log:"
    FAILED+=("$name")
  fi
  grep -v -E "^(Loading weights|Warn)" "$LOGS/$name.log" | tail -n 8 | sed 's/^/   | /'
}

step encode-vit-b-32 "${LIMITS[0]}" "$PY" bench/encode.py --model ViT-B-32 --pretrained none --device "$DEVICE" \
  "${ENC_B[@]}" "${RECORD[@]}"
step encode-vit-l-14 "${LIMITS[1]}" "$PY" bench/encode.py --model ViT-L-14 --pretrained none --device "$DEVICE" \
  "${ENC_L[@]}" "${RECORD[@]}"
step ingest-distributed "${LIMITS[2]}" "$PY" bench/ingest.py --model ViT-B-32 --pretrained none --device "$DEVICE" \
  "${INGEST[@]}" --note "$NOTE" "${RECORD[@]}"
step ocr-stage "${LIMITS[3]}" "$PY" bench/stages.py --parts ocr --device "$DEVICE" "${OCR[@]}" --note "$NOTE" \
  "${RECORD[@]}"
step query-batching "${LIMITS[4]}" "$PY" bench/query.py --pretrained none \
  "${QUERY[@]}" "${RECORD[@]}"
step decode "${LIMITS[5]}" "$PY" bench/decode.py --device "$DEVICE" "${DECODE[@]}" --note "$NOTE" "${RECORD[@]}"

echo "bench/gpu.sh: $(( $(date +%s) - START ))s in all; logs in $LOGS"
if (( ${#FAILED[@]} )); then
  echo "failed steps: ${FAILED[*]}" >&2
  exit 1
fi
