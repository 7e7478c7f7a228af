#!/usr/bin/env bash
# The one prepared GPU command (docs/training.md): bash scripts/gpu_train.sh OUT_DIR [full|smoke]
#
# full  (GPU machine): install carried wheels (.whl/) if needed; time a training step with yolox's per-image
#       SimOTA loop vs the batched assignment (scripts/bench_assignment.py; if the batched one fails there,
#       the runs fall back to yolox's); decode the bundle (.bundle/) and render the synthetic clips once into
#       a shared cache (16 processes); then train these runs IN PARALLEL, one process each, each with a
#       time budget that ends the whole script within TOTAL_S seconds (default 540):
#         nano-sigres-s0 / -s1   yolox-nano-gssam-sigres-p1 from scratch, seeds 0, 1 (+ synthetic clips)
#         nano-base-s0 / -s1     yolox-nano from scratch, seeds 0, 1, identical schedule
#         nano-sigres-ft         the shipped default fine-tuned with its own recipe (lr 4e-4, L1 loss,
#                                small-object power 1): the candidate for the next default
#         s-sigres-s0            yolox-s-gssam-sigres-p1 from scratch, seed 0 (the GPU model)
#       A run spec is NAME:MODEL:SEED:DATA, DATA = syn (+ synthetic clips), real (real data only) or
#       ft (syn, fine-tuning models/weights/default.pt).
# smoke (here, CPU): the same path on a few clips, two nano runs, a 0.5-minute budget.
#
# OUT_DIR receives at most 8 files: results.tar.partNN (15 MiB pieces of one tar holding, per run,
# <run>/best.pt (EMA, fp16), curve.png, log.json, train.log), summary.txt and bench_assignment.txt. Rejoin:
#   cat OUT/results.tar.part* | tar -x -C models/runs
set -uo pipefail
OUT=${1:?usage: bash scripts/gpu_train.sh OUT_DIR [full|smoke]}
MODE=${2:-full}
START=$(date +%s)
PY=${PYTHON:-python3}
BUNDLE=${BUNDLE:-.bundle}
WORK=${WORK:-/tmp/gpu_train}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1

if [ "$MODE" = smoke ]; then
  TOTAL_S=${TOTAL_S:-150}; DEVICE=${DEVICE:-cpu}; SYNTH=2; SYNTH_FRAMES=30
  COMMON="--batch 4 --crop 128 --max-clips 4 --val-per-clip 3 --threads 1 --probe-steps 3 --evals 2 --warmup-steps 5 --visible-boxes tight"
  RUNS="nano-sigres-s0:yolox-nano-gssam-sigres-p1:0:syn nano-sigres-ft:yolox-nano-gssam-sigres-p1:0:ft"
  BENCH="--batch 2 --crop 64 --steps 1 --threads 1"
  PREP_WORKERS=2
else
  TOTAL_S=${TOTAL_S:-540}; DEVICE=${DEVICE:-cuda}; SYNTH=${SYNTH:-120}; SYNTH_FRAMES=150
  COMMON="--batch 64 --crop 320 --val-per-clip 20 --threads 2 --probe-steps 20 --evals 6 --warmup-steps 100 --gpu-reserve-gb 30 --visible-boxes ${VISIBLE_BOXES:-tight}"
  RUNS=${RUNS:-"nano-sigres-s0:yolox-nano-gssam-sigres-p1:0:syn nano-sigres-s1:yolox-nano-gssam-sigres-p1:1:syn nano-base-s0:yolox-nano:0:syn nano-base-s1:yolox-nano:1:syn nano-sigres-ft:yolox-nano-gssam-sigres-p1:0:ft s-sigres-s0:yolox-s-gssam-sigres-p1:0:syn"}
  BENCH="--device cuda --batch 64 --crop 320 --amp --steps 5"
  PREP_WORKERS=$(nproc)
fi

# 1. python packages the GPU image lacks travel as wheels (.whl/, see docs/training.md)
if ! $PY -c "import yolox, loguru, pycocotools" 2>/dev/null; then
  [ -d .whl ] || { echo "error: yolox/loguru/pycocotools missing and no .whl/ folder carried"; exit 2; }
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "error: installing .whl/ failed"; exit 2; }
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
[ -f "$BUNDLE/manifest.json" ] || { echo "error: no bundle at $BUNDLE (run scripts/make_train_bundle.py)"; exit 2; }
$PY - <<'EOF'
import os, sys, torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, GPU {gpu}, {os.cpu_count()} CPUs", flush=True)
EOF

# 2. the step time of both label assignments, side by side; the runs use yolox's if the batched one fails
ASSIGNMENT=batched
$PY -W ignore scripts/bench_assignment.py $BENCH 2>&1 | tee "$OUT/bench_assignment.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || { ASSIGNMENT=yolox; echo "batched assignment failed: the runs use yolox's loop"; }

# 3. decode + render once into the shared cache (RAM-backed /dev/shm when it has room)
CACHE=${CACHE:-}
if [ -z "$CACHE" ]; then
  CACHE=$WORK/cache
  SHM_FREE_GB=$(df -BG --output=avail /dev/shm 2>/dev/null | tail -1 | tr -dc 0-9)
  [ "${SHM_FREE_GB:-0}" -gt 40 ] && CACHE=/dev/shm/gpu_train_cache
fi
SMOKE_LIMIT=""; [ "$MODE" = smoke ] && SMOKE_LIMIT="--max-clips 4"
$PY -m pipeline.offline.train --prepare-only --model yolox-nano --bundle "$BUNDLE" --cache "$CACHE" --out "$WORK/prepare" \
  --epochs 1 --synthetic "$SYNTH" --synthetic-frames "$SYNTH_FRAMES" --workers "$PREP_WORKERS" $SMOKE_LIMIT \
  || { echo "error: preparing the frame cache failed"; exit 1; }
NOW=$(date +%s)
# each run's loop ends by END_BY (runs that load later get less time); 45 s are kept for the last
# evaluation, saving and packing; MINUTES is only an upper cap
END_BY=$((START + TOTAL_S - 45))
MINUTES=$(awk -v t="$TOTAL_S" -v e="$((NOW - START))" 'BEGIN { m = (t - e - 45) / 60; if (m < 0.3) m = 0.3; printf "%.2f", m }')
echo "cache ready at +$((NOW - START))s in $CACHE; training budget $MINUTES min per run"

# 4. all runs in parallel; each writes $WORK/runs/<run>/
PIDS=()
for SPEC in $RUNS; do
  IFS=: read -r NAME MODEL SEED DATA <<<"$SPEC"
  SYN_ARGS="--synthetic $SYNTH --synthetic-frames $SYNTH_FRAMES"; [ "$DATA" = real ] && SYN_ARGS=""
  [ "$DATA" = ft ] && SYN_ARGS="$SYN_ARGS --init models/weights/default.pt --lr 4e-4 --l1-loss --small-object-power 1"
  RUN_DIR=$WORK/runs/$NAME; rm -rf "$RUN_DIR"; mkdir -p "$RUN_DIR"
  $PY -m pipeline.offline.train --model "$MODEL" --seed "$SEED" --device "$DEVICE" --bundle "$BUNDLE" --cache "$CACHE" \
    --minutes "$MINUTES" --end-by "$END_BY" --out "$RUN_DIR" --workers 2 --no-progress --assignment "$ASSIGNMENT" \
    $SMOKE_LIMIT $COMMON $SYN_ARGS \
    >"$RUN_DIR/train.log" 2>&1 &
  PIDS+=($!)
done
FAILED=0
for PID in "${PIDS[@]}"; do wait "$PID" || FAILED=$((FAILED + 1)); done
echo "training finished at +$(($(date +%s) - START))s, $FAILED run(s) failed"

# 5. pack: one tar in <= 15 MiB pieces + a summary
SUMMARY="$OUT/summary.txt"
$PY - "$WORK/runs" "$(($(date +%s) - START))" >"$SUMMARY" <<'EOF'
import json, sys
from pathlib import Path
runs, wall = Path(sys.argv[1]), sys.argv[2]
print(f"gpu_train.sh wall {wall}s")
print(f"{'run':22} {'model':28} {'status':11} {'steps':>6} {'images':>8} {'loop_s':>6} {'gpu':>4} {'best val mAP50:95':>17}")
for run in sorted(p for p in runs.iterdir() if p.is_dir()):
    log = run / "log.json"
    if not log.is_file():
        tail = (run / "train.log").read_text().strip().splitlines()[-1:] if (run / "train.log").is_file() else ["?"]
        print(f"{run.name:22} FAILED: {tail[0][:150]}")
        continue
    r = json.loads(log.read_text())
    print(f"{run.name:22} {r['model']:28} {r['status']:11} {r['steps']:6d} {r['images_seen']:8d} "
          f"{r['train_loop_s']:6.0f} {str(r['frames_on_gpu'])[0]:>4} {r['best_val_map50_95']:17.4f}")
    print("    per epoch mAP50:95: " + " ".join(f"{e['map50_95']:.3f}" for e in r["epochs"]) + f"   [{r['hardware']}]")
EOF
cat "$SUMMARY"
tar -C "$WORK/runs" -cf "$WORK/results.tar" --exclude=last.pt --exclude=.frames.lock . \
  && split -b 15M -d "$WORK/results.tar" "$OUT/results.tar.part" \
  && ls -l "$OUT"
echo "done at +$(($(date +%s) - START))s"
[ "$FAILED" -eq 0 ]
