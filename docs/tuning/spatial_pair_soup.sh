#!/usr/bin/env bash
# Two seeds of the spatial preset side by side, one torch thread each (a 2-core machine: one core each), then the
# soup of the two (docs/tuning.md, sections 39-40: 51.4 min of wall time on 2 cores, nothing else running; +0.186 held
# out on average over 28 pairs of eight seeds, the seeds 0 and 1 +0.184). Prints each run's epoch once a minute; each
# run's own output is in OUT/seedN.log.
#
#   bash docs/tuning/spatial_pair_soup.sh OUT [FIRST_SEED [SECOND_SEED [TRAIN_ARG...]]]
#       # seeds FIRST_SEED (default 0) and SECOND_SEED (default FIRST_SEED + 1); TRAIN_ARGs go to both `diffrl train`s,
#       # e.g. --set train.adam_beta1=0.95
#   diffrl evaluate --lora OUT/soup --prompts shapes:spatial_unseen-val --images-per-prompt 32 --baseline BASE.json
set -euo pipefail
out=${1:?usage: spatial_pair_soup.sh OUT [FIRST_SEED [SECOND_SEED [TRAIN_ARG...]]]}
first=${2:-0}
seeds=("$first" "${3:-$((first + 1))}")
shift $(($# < 3 ? $# : 3))
mkdir -p "$out"
pids=()
for seed in "${seeds[@]}"; do
  diffrl train --config shapes_spatial --seed "$seed" --set run.threads=1 --set run.progress=false "$@" \
      --out "$out/seed$seed" > "$out/seed$seed.log" 2>&1 &
  pids+=($!)
done
progress() {  # the epochs each run has finished (its metrics.jsonl's training lines), once a minute
  while sleep 60; do
    line="$(date +%T)"
    for seed in "${seeds[@]}"; do
      line+="  seed $seed: epoch $(grep -c '"sample_s"' "$out/seed$seed/metrics.jsonl" 2>/dev/null || true)"
    done
    echo "$line"
  done
}
progress &
reporter=$!
trap 'kill "$reporter" 2>/dev/null || true' EXIT
for pid in "${pids[@]}"; do wait "$pid"; done  # a failed run stops the script (set -e) before the soup
diffrl soup "$out/seed${seeds[0]}" "$out/seed${seeds[1]}" --out "$out/soup"
