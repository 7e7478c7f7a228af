#!/bin/bash
# feasibility of weight-space blending on the tuning split (val scenes only): U4 (AP50 on tune-test), V1 (clean forgetting on val)
cd /work/main
PY=.venv/bin/python
for run in U4 V1; do
  for share in 0.25 0.5 0.75; do
    w=out/blend/$run-$share.pt
    $PY -c "from models import blend_checkpoints; blend_checkpoints('models/weights/default.pt','runs/adapt-tune2/$run/adapted.pt',$share,'$w')"
    $PY -m pipeline eval --split val --stride 30 --visible-boxes tight --backend onnx --weights $w --out out/blend/eval-$run-$share-val 2>&1 | grep -i "map50:95\|mAP" | head -3
    $PY -m pipeline eval --data out/proxy/tune-test --classes uav=drone,plane=airplane,heli=helicopter --stride 2 --backend onnx --weights $w --out out/blend/eval-$run-$share-tt 2>&1 | grep -i "agnostic\|map" | head -4
  done
done
