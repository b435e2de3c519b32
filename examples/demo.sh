#!/usr/bin/env bash
# The whole job on the embedded Milvus: demo data -> train on the CPU -> load -> search -> evaluate.
# Every step is cached or idempotent, so a second run is quick (MEET_RETRAIN=1 trains again).
# Each step ends with a "[demo] N s: command" line (benchmarks/bench_first_run.py collects them).
set -euo pipefail

step() {
    local start=$EPOCHREALTIME
    "$@"
    awk -v a="$start" -v b="$EPOCHREALTIME" -v c="$*" 'BEGIN { printf "[demo] %.1f s: %s\n", b - a, c }'
}

step meet-milvus data demo
ckpt="$(python -c 'from meet_milvus.config import load_settings; print(load_settings().data_dir / "checkpoints" / "demo")')"
if [ -f "$ckpt/config.json" ] && [ "${MEET_RETRAIN:-0}" != 1 ]; then
    echo "using the trained checkpoint $ckpt"
else
    step meet-train --data_name demo
fi
step meet-milvus load --collection demo
step meet-milvus search "three wooden cottages" --collection demo -k 5
step meet-milvus eval run --collection demo
# The COCO-like test: training stamps in new scenes.
step meet-milvus load --collection demo_seen --data demo --split test_seen
step meet-milvus search "a lionfish, the moon as a crescent and two electric kettles" --collection demo_seen -k 5
step meet-milvus eval run --collection demo_seen
