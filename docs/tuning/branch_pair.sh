#!/usr/bin/env bash
# A branch of a pair's runs from one epoch: the paired controls of section 43. Copies each run of SRC (SRC/seed*/,
# as spatial_sync_pair.sh or spatial_pair_soup.sh write them) at EPOCH into DST/seedN, with its config (`out`
# pointed at the copy) and metrics, then either averages the two copies' weights and AdamW moments
# (average_checkpoints.py) or leaves them as they are (plain), resumes both to their last epoch side by side (one
# torch thread each, as the source ran) and soups them into DST/soup. Both branches of one SRC share its first
# EPOCH epochs and each member's sampling noise afterwards, so they differ only by the average. SETTINGs (KEY=VALUE,
# e.g. train.step_weight_power=0.5) are written into both copies' config.yaml before they resume (`diffrl train
# --resume` refuses changed settings; a branch is a new run that records what it trains): a change to the last phase
# alone, paired with SRC's own last phase on the same noise (its first epoch after EPOCH samples SRC's images).
#
# The checkpoint taken is SRC/seedN/own_epoch_EPOCH where the source was averaged at EPOCH (its own weights,
# before the average), else SRC/seedN/checkpoints/epoch_EPOCH (keep them with --set run.keep_checkpoints=10).
#
#   bash docs/tuning/branch_pair.sh SRC DST EPOCH plain|average [SETTING...]
#   e.g. the plain pair of a synchronized one:  bash docs/tuning/branch_pair.sh runs/s23/e30 runs/s23/plain 30 plain
set -euo pipefail
usage="usage: branch_pair.sh SRC DST EPOCH plain|average [SETTING...]"
src=${1:?$usage}; dst=${2:?$usage}; epoch=${3:?$usage}; mode=${4:?$usage}
[[ "$mode" == plain || "$mode" == average ]] || { echo "$usage"; exit 2; }
shift 4
settings=("$@")
[ -e "$dst" ] && { echo "$dst exists; choose a new DST"; exit 2; }
here="$(dirname "$0")"
checkpoint=$(printf "epoch_%05d" "$epoch")

sources=(); source_runs=()  # every run's checkpoint is found before anything is copied
for config in "$src"/seed*/config.yaml; do
  [ -f "$config" ] || { echo "no runs under $src (expected $src/seedN/config.yaml)"; exit 2; }
  run=$(dirname "$config")
  from="$run/own_epoch_$epoch"; [ -d "$from" ] || from="$run/checkpoints/$checkpoint"
  [ -d "$from" ] || { echo "$run has no checkpoint at epoch $epoch (neither own_epoch_$epoch nor checkpoints/$checkpoint)"; exit 2; }
  sources+=("$from"); source_runs+=("$run")
done
[ ${#sources[@]} -eq 2 ] || { echo "expected two runs under $src, found ${#sources[@]}"; exit 2; }
runs=()
for i in "${!sources[@]}"; do
  from=${sources[$i]}; run=${source_runs[$i]}
  copy="$dst/$(basename "$run")"
  mkdir -p "$copy/checkpoints"
  cp -r "$from" "$copy/checkpoints/$checkpoint"
  cp "$run/metrics.jsonl" "$copy/"  # the trainer drops the epochs after the checkpoint on resume
  sed "s#^  out: .*#  out: $copy#" "$run/config.yaml" > "$copy/config.yaml"
  [ ${#settings[@]} -eq 0 ] || python "$here/with_settings.py" "$copy/config.yaml" "${settings[@]}"
  runs+=("$copy")
done
if [ "$mode" == average ]; then python "$here/average_checkpoints.py" "${runs[@]}" --epoch "$epoch"; fi

pids=()
for run in "${runs[@]}"; do
  diffrl train --resume "$run" > "$run.log" 2>&1 &
  pids+=($!)
done
for i in "${!pids[@]}"; do wait "${pids[$i]}" || { echo "${runs[$i]} failed; see ${runs[$i]}.log"; exit 1; }; done
diffrl soup "${runs[@]}" --out "$dst/soup"
