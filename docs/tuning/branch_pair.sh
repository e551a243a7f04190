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
# With --new-seeds A,B (section 54) the copies are further members of the pair instead: DST/seedA and DST/seedB, each
# with the random streams of a new run at its seed (reseed_checkpoint.py, after the average; run.seed set to match),
# so that their last phase draws noise of its own. SRC's members are deterministic on one machine: they are what a
# last phase with four members would train beside these two (soup any of them together with `diffrl soup`).
#
# With mode copy (section 61) the copies are only made and their SETTINGs written, neither averaged nor run: the pair
# continued as one more stretch of its first phase, e.g. to a later average with spatial_sync_pair.sh, which resumes
# runs it finds under its OUT (bash docs/tuning/spatial_sync_pair.sh DST A B LATER_EPOCH [--after-sync ...]).
#
#   bash docs/tuning/branch_pair.sh SRC DST EPOCH plain|average|copy [--new-seeds A,B] [SETTING...]
#   e.g. the plain pair of a synchronized one:  bash docs/tuning/branch_pair.sh runs/s23/e30 runs/s23/plain 30 plain
#        two more members from its average:    bash docs/tuning/branch_pair.sh runs/s53/new_s1213 runs/s54/extra 30 average --new-seeds 14,15
set -euo pipefail
usage="usage: branch_pair.sh SRC DST EPOCH plain|average|copy [--new-seeds A,B] [SETTING...]"
src=${1:?$usage}; dst=${2:?$usage}; epoch=${3:?$usage}; mode=${4:?$usage}
[[ "$mode" == plain || "$mode" == average || "$mode" == copy ]] || { echo "$usage"; exit 2; }
shift 4
new_seeds=()
if [ "${1:-}" == --new-seeds ]; then
  IFS=, read -r -a new_seeds <<< "${2:?--new-seeds needs A,B}"; shift 2
  [ ${#new_seeds[@]} -eq 2 ] || { echo "--new-seeds needs two seeds, A,B"; exit 2; }
fi
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
  copy="$dst/$(basename "$run")"; [ ${#new_seeds[@]} -eq 0 ] || copy="$dst/seed${new_seeds[$i]}"
  mkdir -p "$copy/checkpoints"
  cp -r "$from" "$copy/checkpoints/$checkpoint"
  cp "$run/metrics.jsonl" "$copy/"  # the trainer drops the epochs after the checkpoint on resume
  sed "s#^  out: .*#  out: $copy#" "$run/config.yaml" > "$copy/config.yaml"
  copy_settings=("${settings[@]}"); [ ${#new_seeds[@]} -eq 0 ] || copy_settings+=("run.seed=${new_seeds[$i]}")
  [ ${#copy_settings[@]} -eq 0 ] || python "$here/with_settings.py" "$copy/config.yaml" "${copy_settings[@]}"
  runs+=("$copy")
done
if [ "$mode" == average ]; then python "$here/average_checkpoints.py" "${runs[@]}" --epoch "$epoch"; fi
for i in "${!new_seeds[@]}"; do python "$here/reseed_checkpoint.py" "${runs[$i]}" --epoch "$epoch" --seed "${new_seeds[$i]}"; done
if [ "$mode" == copy ]; then  # the copies' later epochs dropped now, as the trainer drops them on resume, for scripts
  for run in "${runs[@]}"; do  # that count a run's epochs before it gets there (spatial_sync_pair.sh)
    python -c 'import sys; from diffrl.runlog import truncate_metrics; truncate_metrics(sys.argv[1], int(sys.argv[2]))' \
        "$run/metrics.jsonl" "$epoch"
  done
  echo "copied to ${runs[*]} at epoch $epoch (not run)"; exit 0
fi

pids=()
for run in "${runs[@]}"; do
  diffrl train --resume "$run" > "$run.log" 2>&1 &
  pids+=($!)
done
for i in "${!pids[@]}"; do wait "${pids[$i]}" || { echo "${runs[$i]} failed; see ${runs[$i]}.log"; exit 1; }; done
diffrl soup "${runs[@]}" --out "$dst/soup"
