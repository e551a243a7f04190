#!/usr/bin/env bash
# The pair soup (spatial_pair_soup.sh) with synchronizations: two seeds of the spatial preset side by side, one
# torch thread each, sharing one LoRA initialization (model.lora_init_seed = FIRST_SEED); at each SYNC_EPOCH both stop
# after that epoch (SIGTERM: each finishes its epoch, checkpoints and exits), their weights and AdamW moments are
# averaged into both checkpoints (average_checkpoints.py), and both resume with their own sampling noise; after the
# last epoch the two are souped (docs/tuning.md, sections 43 and 47). Prints each run's epoch once a minute; each
# run's output is in OUT/seedN.log.
#
#   bash docs/tuning/spatial_sync_pair.sh OUT [FIRST_SEED [SECOND_SEED [SYNC_EPOCHS [TRAIN_ARG...]]]]
#       # defaults: seeds 0 and FIRST_SEED + 1, SYNC_EPOCHS 30 (several: comma-separated, e.g. 10,20,30);
#       # TRAIN_ARGs go to every member's `diffrl train`, except `--after-sync KEY=VALUE` (repeatable): a setting
#       # written into the pair's config.yaml after the last average (with_settings.py), so that the last phase trains with it
#       # (section 52: --after-sync train.step_weight_power=0.5); `--extra-member SEED` (repeatable): a further member
#       # that trains the first phase(s) beside the pair (sharing its LoRA initialization) and joins every average,
#       # but not the last phase, which the pair alone trains and soups (section 61)
#   Stopped (SIGTERM to the script and its runs; each run checkpoints), the same command resumes it: members whose
#   config.yaml exists continue from their last checkpoint, and a phase the pair has already passed is skipped.
#   A member whose run is already at a SYNC_EPOCH (a copy made by `branch_pair.sh SRC OUT EPOCH copy`) waits there
#   for the others instead of running: an extra member added to a finished pair's first phase, paired with its own
#   last phase (section 61).
#   Its paired control, the same two runs continued without the average (section 44):
#   bash docs/tuning/branch_pair.sh OUT OUT_PLAIN SYNC_EPOCH plain
set -euo pipefail
out=${1:?usage: spatial_sync_pair.sh OUT [FIRST_SEED [SECOND_SEED [SYNC_EPOCHS [TRAIN_ARG...]]]]}
first=${2:-0}
pair=("$first" "${3:-$((first + 1))}")
IFS=, read -r -a sync_epochs <<< "${4:-30}"
shift $(($# < 4 ? $# : 4))
previous=0
for sync_epoch in "${sync_epochs[@]}"; do  # the stop signal goes out after the epoch before: it must be of this phase
  [ "$sync_epoch" -ge $((previous + 2)) ] || { echo "SYNC_EPOCHS must rise by 2 or more from 0 (got ${sync_epochs[*]})"; exit 2; }
  previous=$sync_epoch
done
train_args=(); after_sync=(); extra=()
while [ $# -gt 0 ]; do
  if [ "$1" == --after-sync ]; then
    after_sync+=("${2:?--after-sync needs KEY=VALUE}"); shift 2
  elif [ "$1" == --extra-member ]; then
    [[ "${2:-}" =~ ^[0-9]+$ ]] || { echo "--extra-member needs a seed (an integer)"; exit 2; }
    extra+=("$2"); shift 2
  else
    train_args+=("$1"); shift
  fi
done
seeds=("${pair[@]}" "${extra[@]}")  # every member of the first phase(s); the last phase is the pair's
here="$(dirname "$0")"
if [ ${#after_sync[@]} -gt 0 ]; then  # a bad key or value stops here, not after the first phase
  python "$here/with_settings.py" --check shapes_spatial "${after_sync[@]}"
fi
mkdir -p "$out"
epochs_done() { local n; n=$(grep -c '"sample_s"' "$out/seed$1/metrics.jsonl" 2>/dev/null) || true; echo "${n:-0}"; }

progress() {  # the epochs each run has finished, once a minute
  while sleep 60; do
    line="$(date +%T)"
    for seed in "${seeds[@]}"; do line+="  seed $seed: epoch $(epochs_done "$seed")"; done
    echo "$line"
  done
}
progress &
reporter=$!
trap 'kill "$reporter" 2>/dev/null || true' EXIT

start() {  # SEED: the run's first phase, or its resumption after an average (exec: the signal reaches diffrl)
  if [ -f "$out/seed$1/config.yaml" ]; then
    exec diffrl train --resume "$out/seed$1" >> "$out/seed$1.log" 2>&1
  else
    exec diffrl train --config shapes_spatial --seed "$1" --set model.lora_init_seed="$first" --set run.threads=1 \
        --set run.progress=false "${train_args[@]}" --out "$out/seed$1" > "$out/seed$1.log" 2>&1
  fi
}

past() {  # SYNC_EPOCH: the pair trained past it (a resumed later phase): its average is done
  for seed in "${pair[@]}"; do [ "$(epochs_done "$seed")" -gt "$1" ] || return 1; done
}

# Each phase runs every member to the next SYNC_EPOCH. The signal is sent once a run has logged the epoch before it and passed
# its end-of-epoch check (within milliseconds of the log line), so the run stops after epoch SYNC_EPOCH.
for sync_epoch in "${sync_epochs[@]}"; do
  past "$sync_epoch" && continue
  pids=(); stopped=()
  for i in "${!seeds[@]}"; do
    if [ "$(epochs_done "${seeds[$i]}")" -eq "$sync_epoch" ]; then  # already there (a copy): it waits
      pids+=(""); stopped+=("$i")
    else
      start "${seeds[$i]}" & pids+=($!)
    fi
  done
  while [ ${#stopped[@]} -lt ${#seeds[@]} ]; do
    sleep 2
    for i in "${!seeds[@]}"; do
      [[ " ${stopped[*]} " == *" $i "* ]] && continue
      if ! kill -0 "${pids[$i]}" 2>/dev/null; then  # ended before the average: a failure (see its log)
        echo "seed ${seeds[$i]} ended at epoch $(epochs_done "${seeds[$i]}") before epoch $sync_epoch; see $out/seed${seeds[$i]}.log"
        exit 1
      fi
      if [ "$(epochs_done "${seeds[$i]}")" -ge $((sync_epoch - 1)) ]; then
        sleep 1
        kill -TERM "${pids[$i]}"
        stopped+=("$i")
      fi
    done
  done
  for pid in "${pids[@]}"; do [ -z "$pid" ] || wait "$pid" || true; done  # a stopped run exits non-zero (interrupted, checkpoint kept)
  for seed in "${seeds[@]}"; do
    [ "$(epochs_done "$seed")" -eq "$sync_epoch" ] || { echo "seed $seed stopped at epoch $(epochs_done "$seed")"; exit 1; }
  done
  python "$here/average_checkpoints.py" "${seeds[@]/#/$out/seed}" --epoch "$sync_epoch"
done

# The last phase: the pair resumes from the last average with their own noise (and the --after-sync settings); then the soup.
if [ ${#after_sync[@]} -gt 0 ]; then
  for seed in "${pair[@]}"; do python "$here/with_settings.py" "$out/seed$seed/config.yaml" "${after_sync[@]}"; done
fi
pids=()
for seed in "${pair[@]}"; do start "$seed" & pids+=($!); done
for pid in "${pids[@]}"; do wait "$pid"; done
diffrl soup "$out/seed${pair[0]}" "$out/seed${pair[1]}" --out "$out/soup"
