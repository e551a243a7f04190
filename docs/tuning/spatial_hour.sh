#!/usr/bin/env bash
# The spatial command inside the hour (docs/tuning.md, sections 64-65): the synchronized pair (spatial_sync_pair.sh,
# averaged once at epoch 30) with LoRA on the UNet's attention, convolutions and feed-forward layers, sampled with the
# adapters merged into the weights, and a last phase that weights the later denoising steps more and samples B2's
# branches (one stage from step 7, 4 branches of 2 trunks per prompt). About 50 min on 2 cores, nothing else running.
#
#   bash docs/tuning/spatial_hour.sh OUT [FIRST_SEED [SECOND_SEED [TRAIN_ARG...]]]
#       # seeds FIRST_SEED (default 0) and SECOND_SEED (default FIRST_SEED + 1); TRAIN_ARGs as spatial_sync_pair.sh's
#   Stopped (SIGTERM to this script and its runs), the same command resumes it, in either phase (spatial_sync_pair.sh).
#   diffrl evaluate --lora OUT/soup --model builtin:shapes-spatial2 --prompts shapes:spatial_unseen-val \
#       --images-per-prompt 32 --baseline BASE.json
set -euo pipefail
out=${1:?usage: spatial_hour.sh OUT [FIRST_SEED [SECOND_SEED [TRAIN_ARG...]]]}
first=${2:-0}
second=${3:-$((first + 1))}
shift $(($# < 3 ? $# : 3))
exec bash "$(dirname "$0")/spatial_sync_pair.sh" "$out" "$first" "$second" 30 \
    --set model.lora_target_modules=to_k,to_q,to_v,to_out.0,proj_in,proj_out,ff.net.0.proj,ff.net.2,conv1,conv2 \
    --set sample.merge_lora=true --after-sync train.step_weight_power=0.5 \
    --after-sync b2.enabled=true --after-sync b2.stages=1 --after-sync b2.start_steps=7 --after-sync b2.branches=4 \
    --after-sync b2.selection=all --after-sync sample.k=2 "$@"
