#!/usr/bin/env bash
# Reproduces everything under docs/results/ (the LOOP paper's Figure 2/3 analogues and the B2-DiffuRL
# comparison on ShapesWorld). Run from the repository root with the virtualenv active. The runs were
# made as two concurrent streams (A: cb-a then spatial, B: cb-b then counting), 1 torch thread each,
# on a 2-core CPU. Every run: config defaults (built-in model, 10 DDIM steps, eta 1, guidance 3,
# 16 prompts x K per epoch, LoRA rank 4, lr 5e-4, clip 0.2) and the same budget of 576 sampled images
# (9 epochs at 64 images, 12 at 48, 18 at 32).
# Those were the defaults and the base model of commit 2cc3481; the defaults (learning rate, clip range, update
# schedule, 256 images per epoch) and the built-in model have changed since (docs/tuning.md), so the exact
# numbers come from running this script in a checkout of 2cc3481: `git worktree add ../diffrl-2cc3481 2cc3481`.
set -euo pipefail
shopt -s nullglob  # a study whose companion runs are gone (fig3's PPO from fig2) reports the runs it has
# The issue-13 studies below train the UNet's adapters only, the default on builtin:shapes until 2026-12-02 (since
# then the text encoder's too, docs/tuning.md section 18): their runs state it, so that every seed trains the same.
UNET_ONLY="--set model.train_text_encoder=false"
# ---------------------------------------------------------------------------------------------------------------
# Issue 13, today's defaults (docs/results/README.md "Figure 2 at 10,240 images"): `bash docs/results/reproduce.sh fig2-cb`
# runs only this part. Colour binding on the shipped base, 40 epochs x 256 images per run, held-out evaluation every
# 5 epochs; first a learning-rate sweep per method on seed 0, then 3 seeds at the chosen rate. Resumable: the same
# command (or `diffrl compare --resume runs/cmp2/fig2-cb`) skips finished runs and resumes unfinished ones.
fig2_cb() { fig2 cb 0.50 0.55; }
# A study longer than a sitting, on machines whose runs/ does not survive between sittings: `bash
# docs/results/reproduce.sh save-progress NAME` keeps a record (config and metrics, tens of kB) of every finished run
# of runs/cmp2/NAME under docs/results/progress/NAME (commit it), and each study below starts by putting those
# records back where runs/ lacks the run: compare counts a finished run's record as that run and trains the rest.
save_progress() {
  python - "runs/cmp2/$1" "docs/results/progress/$1" <<'PY'
import sys
from pathlib import Path
from diffrl.report import load_run, write_record
study, kept = Path(sys.argv[1]), Path(sys.argv[2])
for run_dir in sorted(study.glob("*/*/*")):  # sweep/METHOD/lrLR and runs/METHOD/seedS; links are sweep runs
    run = None if run_dir.is_symlink() or not (run_dir / "config.yaml").is_file() else load_run(run_dir)
    if run and run["finished"]:
        write_record(run, kept / run_dir.relative_to(study))
        print(f"kept {run_dir} -> {kept / run_dir.relative_to(study)}")
PY
}
restore_progress() {
  local rec dest
  for rec in docs/results/progress/$1/*/*/*; do
    [[ -d $rec ]] || continue
    dest=runs/cmp2/$1/${rec#docs/results/progress/$1/}
    [[ -e $dest ]] || { mkdir -p "$(dirname "$dest")"; cp -r "$rec" "$dest"; }
  done
}
# results_report NAME ARGS...: `diffrl report ARGS` into docs/results/NAME, without its report.html (its image links
# point into runs/, which is not committed)
results_report() {
  local out=docs/results/$1; shift
  diffrl report "$@" --out "$out"
  rm -f "$out/report.html"
}
# fig2 TASK T1 T2 [TASK ARGS...]: the Figure 2 sweep and comparison on TASK's prompts, time to held-out success T1 and T2
fig2() {
  local task=$1 t1=$2 t2=$3; shift 3
  restore_progress fig2-$task
  diffrl compare --algos reinforce,reinforce-loo,ppo --seeds 0,1,2 --budget 10240 --lr-sweep 3e-4,1e-3,3e-3 "$@" \
    --set run.eval_every=5 --set run.threads=1 --set run.progress=false $UNET_ONLY \
    --target eval/shapes_success=$t1 --target eval/shapes_success=$t2 --out runs/cmp2/fig2-$task
  results_report figure2-$task runs/cmp2/fig2-$task/runs/*/seed* --target eval/shapes_success=$t1 \
    --target eval/shapes_success=$t2
}
# Figure 3 at 10,240 images (docs/results/README.md): LOOP K = 4, 3, 2 at about 256 images and 16 updates per epoch
# (64 x 4, 85 x 3, 128 x 2), learning rate 1e-3; PPO is fig2_cb's run. `bash docs/results/reproduce.sh fig3-cb`.
# LOOP_LR=3e-3 runs them at another rate (LOOP's own sweep, loop_sweep below, picked 3e-3 on both tasks) into
# runs/cmp2/fig3-TASK-lr3e-3 and docs/results/figure3-TASK-lr3e-3; FIG3_ALGOS=loop:k=4 runs only K = 4.
fig3_cb() { fig3 cb 0.50 0.55 0.60; }
# fig3 TASK T1 T2 T3 [TASK ARGS...]: the three LOOP runs on TASK's prompts; the report adds fig2 TASK's PPO runs
fig3() {
  local task=$1 t1=$2 t2=$3 t3=$4 seeds=${SEEDS:-0,} name=fig3-$1${LOOP_LR:+-lr$LOOP_LR}; shift 4
  restore_progress $name
  diffrl compare --algos "${FIG3_ALGOS:-loop:k=4,loop:k=3:sample.prompts_per_batch=85,loop:k=2:sample.prompts_per_batch=128}" \
    --seeds "$seeds" --budget 10240 --set train.learning_rate=${LOOP_LR:-1e-3} "$@" --set run.eval_every=5 \
    --set run.threads=1 --set run.progress=false $UNET_ONLY --target eval/shapes_success=$t2 --out runs/cmp2/$name
  results_report ${name/fig3/figure3} runs/cmp2/fig2-$task/runs/ppo/seed* runs/cmp2/$name/runs/*/seed* \
    --target eval/shapes_success=$t1 --target eval/shapes_success=$t2 --target eval/shapes_success=$t3
}
# B2-DiffuRL on and off at 10,240 images (docs/results/README.md): PPO and LOOP with one trunk per prompt and 4
# branches (64 x 4 = 256 images per epoch, as K = 4 without B2), 40 stages over the 40 epochs, learning rate 1e-3;
# B2 off is fig2_cb's PPO and fig3_cb's LOOP K = 4. `bash docs/results/reproduce.sh b2-cb` (SEEDS=0,1,2 for more).
b2_cb() { b2 cb 0.50 0.55; }
# b2 TASK T1 T2 [TASK ARGS...]: B2 on with PPO and LOOP on TASK's prompts; B2 off is fig2 TASK's PPO and fig3 TASK's LOOP K = 4
b2() {
  local task=$1 t1=$2 t2=$3 seeds=${SEEDS:-0,}; shift 3
  restore_progress b2-$task
  diffrl compare --algos ppo:k=1:b2.enabled=true:b2.branches=4:b2.stages=40,loop:k=1:b2.enabled=true:b2.branches=4:b2.stages=40 \
    --seeds "$seeds" --budget 10240 --set train.learning_rate=1e-3 "$@" --set run.eval_every=5 --set run.threads=1 \
    --set run.progress=false $UNET_ONLY --target eval/shapes_success=$t2 --out runs/cmp2/b2-$task
  results_report b2-$task runs/cmp2/fig2-$task/runs/ppo/seed* runs/cmp2/fig3-$task/runs/loop_k_4/seed* \
    runs/cmp2/b2-$task/runs/*/seed* --target eval/shapes_success=$t1 --target eval/shapes_success=$t2
}
# Figure 2 on spatial relations (docs/results/README.md): fig2_cb's study on the shipped spatial base
# (builtin:shapes-spatial, held-out spatial success 0.579), trained on every phrasing of the 27 unseen training
# pairs, evaluated on the 27 held-out pairs; the same budget, sweep and resumability. `bash docs/results/reproduce.sh
# fig2-sp` (about 12-15 min per run at one thread: 9 sweep runs, then seeds 1 and 2 of each method).
SPATIAL="--model builtin:shapes-spatial --prompts shapes:spatial_unseen-train-all --set run.eval_prompts=shapes:spatial_unseen-val"
fig2_sp() { fig2 sp 0.60 0.65 $SPATIAL; }
# Figure 3 on spatial relations: fig3_cb's three LOOP runs on fig2_sp's task; PPO is fig2_sp's run.
# `bash docs/results/reproduce.sh fig3-sp` (SEEDS=0,1,2 for more).
fig3_sp() { fig3 sp 0.60 0.65 0.70 $SPATIAL; }
# B2 on spatial relations: b2_cb's two runs on fig2_sp's task. `bash docs/results/reproduce.sh b2-sp` (SEEDS=0,1,2 for more).
b2_sp() { b2 sp 0.60 0.65 $SPATIAL; }
# Issue 13's fairness rule for LOOP: Figures 3 and B2 ran LOOP at 1e-3, its default, while Figure 2 swept each of
# its methods. LOOP K = 4's own 3-point sweep on seed 0, on TASK's prompts, and the report of its three runs.
# `bash docs/results/reproduce.sh loop-sweep-cb` / `loop-sweep-sp` (three runs, 10-12 min each at one thread beside another run).
loop_sweep() {
  local task=$1 t1=$2 t2=$3; shift 3
  restore_progress loop-sweep-$task
  diffrl compare --algos loop:k=4 --seeds 0, --budget 10240 --lr-sweep 3e-4,1e-3,3e-3 "$@" --set run.eval_every=5 \
    --set run.threads=1 --set run.progress=false $UNET_ONLY --target eval/shapes_success=$t1 \
    --target eval/shapes_success=$t2 --out runs/cmp2/loop-sweep-$task
  results_report loop-sweep-$task runs/cmp2/loop-sweep-$task/sweep/*/lr* --split-by train.learning_rate \
    --target eval/shapes_success=$t1 --target eval/shapes_success=$t2
}
if [[ "${1:-}" == save-progress ]]; then save_progress "$2"; exit 0; fi
if [[ "${1:-}" == loop-sweep-cb ]]; then loop_sweep cb 0.50 0.55; exit 0; fi
if [[ "${1:-}" == loop-sweep-sp ]]; then loop_sweep sp 0.60 0.65 $SPATIAL; exit 0; fi
if [[ "${1:-}" == fig2-cb ]]; then fig2_cb; exit 0; fi
if [[ "${1:-}" == fig3-sp ]]; then fig3_sp; exit 0; fi
if [[ "${1:-}" == fig2-sp ]]; then fig2_sp; exit 0; fi
if [[ "${1:-}" == b2-cb ]]; then b2_cb; exit 0; fi
if [[ "${1:-}" == b2-sp ]]; then b2_sp; exit 0; fi
if [[ "${1:-}" == fig3-cb ]]; then fig3_cb; exit 0; fi

# Everything below: the 2026-11-23 figures, at commit 2cc3481.
OUT=${OUT:-runs/figs}
COMMON="--seeds 16,27,42 --budget 576 --k 4 --set run.eval_every=3 --set run.threads=1 --set run.progress=false"
CB="--prompts shapes:color_binding_unseen-train --set run.eval_prompts=shapes:color_binding_unseen-val --set run.eval_images_per_prompt=4"
B2="b2.enabled=true:k=1:b2.branches=4"   # one trunk per prompt, 4 branches: 64 images/epoch like K=4

# color binding: the Figure 2 methods + LOOP K=4 (stream A), B2 and LOOP K=2,3 (stream B)
diffrl compare --algos reinforce,reinforce-loo,ppo,loop $COMMON $CB --set b2.stages=9 --out $OUT/cb-a
diffrl compare --algos ppo:$B2,loop:$B2,loop:k=2,loop:k=3 $COMMON $CB --set b2.stages=9 --out $OUT/cb-b
# Figure 3 on spatial (unseen pairs) and counting (no unseen split: train -> val)
diffrl compare --algos ppo,loop:k=2,loop:k=3,loop $COMMON --prompts shapes:spatial_unseen-train \
  --set run.eval_prompts=shapes:spatial_unseen-val --set run.eval_images_per_prompt=4 --out $OUT/spatial
diffrl compare --algos ppo,loop:k=2,loop:k=3,loop $COMMON --prompts shapes:counting_train \
  --set run.eval_prompts=shapes:counting_val --set run.eval_images_per_prompt=8 --out $OUT/counting

# The figures: reports over subsets of those runs (seeds are replicates, grouped by algorithm and K)
R=runs
diffrl report $OUT/cb-a/$R/{reinforce,reinforce-loo,ppo}/seed* --out docs/results/figure2
diffrl report $OUT/cb-a/$R/{ppo,loop}/seed* $OUT/cb-b/$R/loop_k_{2,3}/seed* --out docs/results/figure3-color_binding
for CAT in spatial counting; do
  diffrl report $OUT/$CAT/$R/*/seed* --out docs/results/figure3-$CAT
done
diffrl report $OUT/cb-a/$R/{ppo,loop}/seed* $OUT/cb-b/$R/{ppo,loop}_b2*/seed* --out docs/results/b2-color_binding
for D in cb-a cb-b spatial counting; do cp $OUT/$D/compare.json docs/results/compare-$D.json; done
rm -f docs/results/*/report.html   # its image links point into runs/, which is not committed

