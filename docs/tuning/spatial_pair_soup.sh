#!/usr/bin/env bash
# Two seeds of the spatial preset side by side, one torch thread each (a 2-core machine: one core each), then the
# soup of the two (docs/tuning.md, section 39: 51.4 min of wall time on 2 cores, nothing else running).
#
#   bash docs/tuning/spatial_pair_soup.sh OUT [FIRST_SEED]     # seeds FIRST_SEED and FIRST_SEED + 1 (default 0, 1)
#   diffrl evaluate --lora OUT/soup --prompts shapes:spatial_unseen-val --images-per-prompt 32 --baseline BASE.json
set -euo pipefail
out=${1:?usage: spatial_pair_soup.sh OUT [FIRST_SEED]}
first=${2:-0}
seeds=("$first" "$((first + 1))")
mkdir -p "$out"
pids=()
for seed in "${seeds[@]}"; do
  diffrl train --config shapes_spatial --seed "$seed" --set run.threads=1 --set run.progress=false \
      --out "$out/seed$seed" > "$out/seed$seed.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done  # a failed run stops the script (set -e) before the soup
diffrl soup "$out/seed${seeds[0]}" "$out/seed${seeds[1]}" --out "$out/soup"
