#!/usr/bin/env bash
# The weights a synchronized pair (spatial_sync_pair.sh) had at its average, exported for `diffrl evaluate --lora`:
# OUT/average (the members' weights averaged parameter by parameter, what they resumed from: a pair's two, or more
# with `--extra-member`, section 61) and OUT/seedN (each member's own weights just before the average), each a run
# directory (lora/ and config.yaml; docs/tuning.md, section 56).
#
#   bash docs/tuning/average_at.sh SRC EPOCH OUT     # e.g. runs/s53/new_s1213 30 runs/s56/at30_s1213
set -euo pipefail
usage="usage: average_at.sh SRC EPOCH OUT"
src=${1:?$usage}; epoch=${2:?$usage}; out=${3:?$usage}
[ -e "$out" ] && { echo "$out exists; choose a new OUT"; exit 2; }
here="$(dirname "$0")"
checkpoint=$(printf "epoch_%05d" "$epoch")
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
runs=()  # every run is checked before anything is written
for config in "$src"/seed*/config.yaml; do
  [ -f "$config" ] || { echo "no runs under $src (expected $src/seedN/config.yaml)"; exit 2; }
  run=$(dirname "$config")  # own_epoch_E: the pair's own weights; checkpoints/ holds the averaged ones after it
  [ -d "$run/own_epoch_$epoch" ] || {
    echo "$run has no own_epoch_$epoch (the weights before an average at epoch $epoch)"; exit 2; }
  runs+=("$run")
done
[ ${#runs[@]} -ge 2 ] || { echo "expected two or more runs under $src, found ${#runs[@]}"; exit 2; }
copies=()
for run in "${runs[@]}"; do
  for kind in own average; do
    copy="$work/$kind/$(basename "$run")"
    mkdir -p "$copy/checkpoints"
    cp -r "$run/own_epoch_$epoch" "$copy/checkpoints/$checkpoint"
    cp -r "$run/lora" "$run/config.yaml" "$copy/"
  done
  python "$here/trajectory_average.py" "$work/own/$(basename "$run")" --from-epoch "$epoch" \
      --out "$out/$(basename "$run")" > /dev/null
  copies+=("$work/average/$(basename "$run")")
done
python "$here/average_checkpoints.py" "${copies[@]}" --epoch "$epoch" > /dev/null
python "$here/trajectory_average.py" "${copies[0]}" --from-epoch "$epoch" --out "$out/average" > /dev/null
echo "wrote $out/average and one directory per member ($out/seedN)"
