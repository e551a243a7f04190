#!/usr/bin/env bash
# docs/tuning.md section 37, the GPU part: the spatial preset at 60 epochs (seeds 10-13), 40 epochs (10-17) and
# 30 epochs (20-27), one process per run, all at once on one GPU, then every disjoint pair of the 40- and 30-epoch
# runs souped, and every run and soup evaluated on the held-out prompts at 32 images.
#   bash docs/tuning/gpu_soups.sh OUT_DIR          (python3 with a CUDA torch; diffrl importable)
# On one H200 (16 CPU cores) the 12 runs of the first group took 4-5.5 min, the 8 of the second 2.5 min; the session
# ran the groups as two calls (RUN_GROUPS="60 40", then RUN_GROUPS=30); RUN_GROUPS="60 60notf32" asks whether
# TF32 costs the 60-epoch runs their gain (read ratio_onpolicy_dev in each run's metrics.jsonl too). Then, on any
# machine with diffrl:
#   PYTHONPATH=docs/tuning python docs/tuning/seeds.py OUT_DIR/evals/base/results.json OUT_DIR/evals/e40_s1?
set -u
R=${1:?usage: gpu_soups.sh OUT_DIR}
mkdir -p "$R/evals" "$R/logs"
TRAIN="python3 -m diffrl.cli train --config shapes_spatial --set run.progress=false --set train.chunk_size=256 --set run.eval_prompts=none --set run.threads=1"
EVAL="python3 -m diffrl.cli evaluate --prompts shapes:spatial_unseen-val --images-per-prompt 32 --threads 1"
chain() {  # NAME EPOCHS SEED [SETTINGS...]: train, then evaluate
  $TRAIN --epochs "$2" --seed "$3" "${@:4}" --out "$R/$1" > "$R/logs/$1.log" 2>&1 && touch "$R/$1.done" &&
    $EVAL --lora "$R/$1" --out "$R/evals/$1" > "$R/logs/eval_$1.log" 2>&1
}
souped() {  # NAME A B: soup two runs once both are trained, then evaluate
  while [ ! -f "$R/$2.done" ] || [ ! -f "$R/$3.done" ]; do sleep 2; done
  python3 -m diffrl.cli soup "$R/$2" "$R/$3" --out "$R/$1" > "$R/logs/$1.log" 2>&1 &&
    $EVAL --model builtin:shapes-spatial2 --lora "$R/$1" --out "$R/evals/$1" > "$R/logs/eval_$1.log" 2>&1
}
$EVAL --model builtin:shapes-spatial2 --out "$R/evals/base" > "$R/logs/eval_base.log" 2>&1 &
for group in ${RUN_GROUPS:-60 40 30}; do
  case $group in
    60) for s in 10 11 12 13; do chain e60_s$s 60 $s & done ;;
    # not yet run (docs/tuning.md section 38): the 60-epoch runs again without TF32, against group 60 at the same seeds
    60notf32) for s in 10 11 12 13; do chain e60notf32_s$s 60 $s --set train.allow_tf32=false & done ;;
    40) for s in 10 11 12 13 14 15 16 17; do chain e40_s$s 40 $s & done
        for p in "10 11" "12 13" "14 15" "16 17"; do set -- $p; souped soup40_s$1_$2 e40_s$1 e40_s$2 & done ;;
    30) for s in 20 21 22 23 24 25 26 27; do chain e30_s$s 30 $s & done
        for p in "20 21" "22 23" "24 25" "26 27"; do set -- $p; souped soup30_s$1_$2 e30_s$1 e30_s$2 & done ;;
  esac
done
wait
ls "$R/evals"
