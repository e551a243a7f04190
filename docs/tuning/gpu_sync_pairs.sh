#!/usr/bin/env bash
# docs/tuning.md section 47, the GPU part: the synchronized pair (spatial_sync_pair.sh) against the plain pair from
# the same first 30 epochs (branch_pair.sh's control), at four pairs of seeds at once on one GPU. For each pair
# (a, b): the spatial preset at seeds a and b, sharing one LoRA initialization (model.lora_init_seed = a), each to
# epoch 60 (the plain pair); once both have passed epoch 30, their epoch-30 checkpoints are branched, averaged and
# resumed to 60 (branch_pair.sh ... average: the synchronized pair). Both pairs are souped, and every run, soup and
# the base are evaluated on the held-out prompts at 32 images. One process per run (up to 16 at a time),
# `train.chunk_size=256`, `run.eval_prompts=none`, TF32 off unless ALLOW_TF32=true (section 37's open question).
#
#   bash docs/tuning/gpu_sync_pairs.sh OUT_DIR [SEED...]     # default seeds 0-7: pairs (0,1) (2,3) (4,5) (6,7)
#   # then, on any machine with diffrl (paired over held-out prompts with the base's evaluation):
#   PYTHONPATH=docs/tuning python docs/tuning/seeds.py OUT_DIR/evals/base/results.json OUT_DIR/evals/sync*
# Needs `diffrl` and `python` on PATH with a CUDA torch. Knobs for a quick check on a CPU: SYNC_EPOCH (30),
# EVAL_IMAGES (32), EXTRA_TRAIN (extra `diffrl train` arguments for every run, e.g. "--set run.epochs=4").
set -u
R=${1:?usage: gpu_sync_pairs.sh OUT_DIR [SEED...]}
shift
seeds=("$@"); [ ${#seeds[@]} -gt 0 ] || seeds=(0 1 2 3 4 5 6 7)
[ $((${#seeds[@]} % 2)) -eq 0 ] || { echo "give an even number of seeds (they pair up in order)"; exit 2; }
here="$(cd "$(dirname "$0")" && pwd)"
sync_epoch=${SYNC_EPOCH:-30}
mkdir -p "$R/evals" "$R/logs"
# shellcheck disable=SC2206
extra=(${EXTRA_TRAIN:-})
train_settings=(--set run.progress=false --set train.chunk_size=256 --set run.eval_prompts=none --set run.threads=1
                --set train.allow_tf32="${ALLOW_TF32:-false}" --set run.keep_checkpoints=10 "${extra[@]}")
evaluate() {  # NAME [RUN_OR_SOUP]: the base without one
  diffrl evaluate --model builtin:shapes-spatial2 ${2:+--lora "$2"} --prompts shapes:spatial_unseen-val \
      --images-per-prompt "${EVAL_IMAGES:-32}" --threads 1 --out "$R/evals/$1" > "$R/logs/eval_$1.log" 2>&1
}
checkpoint=$(printf "epoch_%05d" "$sync_epoch")

pair() {  # A B: the plain pair to 60, the synchronized branch from its epoch 30, both souped and evaluated
  local a=$1 b=$2 plain="$R/plain$1$2" synced="$R/sync$1$2" s name
  for s in "$a" "$b"; do
    diffrl train --config shapes_spatial --seed "$s" --set model.lora_init_seed="$a" "${train_settings[@]}" \
        --out "$plain/seed$s" > "$R/logs/plain$a${b}_seed$s.log" 2>&1 &
  done
  both_saved() {  # a checkpoint is complete once its state.json is there (written last)
    [ -f "$plain/seed$a/checkpoints/$checkpoint/state.json" ] && [ -f "$plain/seed$b/checkpoints/$checkpoint/state.json" ]
  }
  until both_saved; do
    sleep 2
    if [ "$(jobs -rp | wc -l)" -lt 2 ] && ! both_saved; then
      echo "pair $a $b: a run ended without a checkpoint at epoch $sync_epoch; see $R/logs"; return 1
    fi
  done
  bash "$here/branch_pair.sh" "$plain" "$synced" "$sync_epoch" average > "$R/logs/sync$a$b.log" 2>&1
  wait
  diffrl soup "$plain/seed$a" "$plain/seed$b" --out "$plain/soup" > "$R/logs/soup_plain$a$b.log" 2>&1
  for name in "seed$a" "seed$b" soup; do
    evaluate "plain$a${b}_$name" "$plain/$name" &
    evaluate "sync$a${b}_$name" "$synced/$name" &
  done
  wait
}

evaluate base &
for ((i = 0; i < ${#seeds[@]}; i += 2)); do
  pair "${seeds[$i]}" "${seeds[$((i + 1))]}" &
done
wait
ls "$R/evals"
