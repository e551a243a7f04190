#!/usr/bin/env bash
# The learning-efficiency study of docs/tuning.md, run by run (seed 0 unless named: NAME_sN is seed N).
# Each run: one torch thread, so two can share a 2-core machine (`bash docs/tuning/reproduce.sh NAME` runs one;
# no argument: all, one after the other, several hours on 2 cores). Then: python docs/tuning/summarize.py runs/study/*/
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=docs/tuning
# Base models (section 6). The shipped model is `nocb` (PretrainConfig's defaults); sections 1-5 ran on `v1`, the
# model shipped until 2026-11-30 (every category in pretraining), so their rows train with --model runs/pretrain/v1.
SPATIAL_ONLY="--category-weights spatial=1,single=0,counting=0"
REPAIR="--unet-steps 1000 --high-noise-fraction 0.3"  # every category at its default weight
declare -A PRETRAIN=(
  [v1]="--category-weights color_binding=1"
  [u2000]="--category-weights color_binding=1 --unet-steps 2000"
  [u1200]="--category-weights color_binding=1 --unet-steps 1200"
  [nocb]=""
  [nocb_sp015]="--category-weights spatial=0.15"
  [nocb_v]="--loss-weighting v"                                   # section 9
  [nocb_v_sp3]="--loss-weighting v --category-weights spatial=3"  # section 9
  [zsnr]="--zero-terminal-snr --stop-after 4000"                      # section 10: its 4,000-step save (stopped there)
  [zsnr_sp3]="--zero-terminal-snr --category-weights spatial=3"    # section 10 (stopped after its 4,000-step save)
  [zsnr_hn30]="--zero-terminal-snr --high-noise-fraction 0.3"      # section 10 (stopped after its 2,000-step save)
  [zsnr_hn50]="--zero-terminal-snr --high-noise-fraction 0.5"      # section 10
  [zsnr_hn50_bert]="--zero-terminal-snr --high-noise-fraction 0.5 --bidirectional-text"  # section 10
  # section 11: phases after zsnr (--init: the named model is built first)
  [zsnr_hn80]="--init runs/pretrain/zsnr --unet-steps 2000 --high-noise-fraction 0.8"
  [zsnr_spB]="--init runs/pretrain/zsnr --unet-steps 2000 $SPATIAL_ONLY --high-noise-fraction 0.5"
  [zsnr_spA]="--init runs/pretrain/zsnr --unet-steps 2000 $SPATIAL_ONLY --high-noise-fraction 1.0"
  [zsnr_spA_fix]="--init runs/pretrain/zsnr_spA $REPAIR"
)
for n in 500 650 800 1000 1250 1500; do  # section 11 (1500: section 30): shorter spatial phases, each followed by the same repair phase
  PRETRAIN[zsnr_spA$n]="--init runs/pretrain/zsnr --unet-steps $n $SPATIAL_ONLY --high-noise-fraction 1.0"
  PRETRAIN[zsnr_spA${n}_fix]="--init runs/pretrain/zsnr_spA$n $REPAIR"
done
V1="--model runs/pretrain/v1"
OLD="--set train.clip_range=0.2 --set train.inner_epochs=1 --set train.minibatches=2 --set train.learning_rate=5e-4"
REUSE="--set train.inner_epochs=4 --set train.minibatches=4"   # sections 1-6's default for clipped estimators
P16="--set sample.prompts_per_batch=16"                          # sections 1-6's default: 64 images per epoch
# Sections 1-6 ran under the defaults of their day (16 prompts x K 4, 4 x 4 updates); section 7 replaced them
# with 64 prompts x K 4 in one pass of 16 updates, so every row before section 7 states the old ones.
# The UNet's adapters only: the default on builtin:shapes until section 18 (2026-12-02) also trained the text encoder's.
UNET_ONLY="--set model.train_text_encoder=false"
OLD6="$P16 $REUSE $UNET_ONLY"
FRESH="--set sample.prompts_per_batch=64 --set train.inner_epochs=1 --set train.minibatches=16 $UNET_ONLY"  # section 7's schedule (the defaults of sections 7-17, stated in case they change)
XATTN="--set model.lora_target_modules=attn2.to_q,attn2.to_k,attn2.to_v,attn2.to_out.0"
HARD3="--prompts tuning_prompts:hard3 --set run.eval_prompts=tuning_prompts:hard3 --set run.eval_images_per_prompt=16"
SPATIAL="--prompts shapes:spatial_unseen-train --set run.eval_prompts=shapes:spatial_unseen-val"
SP650="--model runs/pretrain/zsnr_spA650_fix $SPATIAL --set run.eval_every=10"
SP800="--model runs/pretrain/zsnr_spA800_fix $SPATIAL --set run.eval_every=10"
SP1000="--model runs/pretrain/zsnr_spA1000_fix $SPATIAL --set run.eval_every=10"  # section 13
# section 15: every phrasing of the RL pairs (216 prompts), the same held-out set
SPALL="--model runs/pretrain/zsnr_spA1000_fix --prompts shapes:spatial_unseen-train-all --set run.eval_prompts=shapes:spatial_unseen-val --set run.eval_every=10"
W1COS="--reward shapes_success --set train.step_weight_power=1 --set train.lr_schedule=cosine"
# sections 16-17: every phrasing, the text encoder at lr 2e-3, K = 8 with 16 updates of 32 samples per epoch
K8="$SPALL $W1COS --set model.train_text_encoder=true --set train.learning_rate=2e-3 --set sample.k=8 --set train.minibatches=16"
declare -A RUNS=(
  [old_defaults]="$V1 $P16 $OLD --epochs 60"
  [overfit3]="$V1 $HARD3 $OLD6 --set train.learning_rate=1e-3 --epochs 20"
  [overfit3_lr1e-2]="$V1 $HARD3 $OLD6 --set train.learning_rate=1e-2 --epochs 20"
  [overfit3_lr1e-2_noclip]="$V1 $HARD3 $OLD6 --set train.learning_rate=1e-2 --set train.clip_range=100 --epochs 20"
  [cb_lead_succ]="$V1 $OLD6 --set train.learning_rate=1e-3 --set train.clip_range=1e-3 --reward shapes_success --epochs 30"
  [cb_lr3e-3]="$V1 $OLD6 --set train.learning_rate=3e-3 --epochs 30"
  [cb_lr1e-2]="$V1 $OLD6 --set train.learning_rate=1e-2 --epochs 30"
  [cb_lr3e-3_kl1]="$V1 $OLD6 --set train.learning_rate=3e-3 --set train.kl_coef=1 --epochs 30"
  [cb_lr3e-3_kl10]="$V1 $OLD6 --set train.learning_rate=3e-3 --set train.kl_coef=10 --epochs 30"
  [cb_lr3e-3_k16p4]="$V1 $OLD6 --set train.learning_rate=3e-3 --k 16 --set sample.prompts_per_batch=4 --epochs 30"
  [cb_xattn_lr3e-3]="$V1 $OLD6 --set train.learning_rate=3e-3 $XATTN --epochs 30"
  [sp_lead_succ]="$V1 $SPATIAL $OLD6 --set train.learning_rate=1e-3 --set train.clip_range=1e-3 --reward shapes_success --epochs 40"
  [sp_first3_lr3e-3]="$V1 $SPATIAL $OLD6 --set train.learning_rate=3e-3 --set train.first_steps=3 --reward shapes_success --epochs 40"
  [sp_graded_first3_lr1e-3]="$V1 $SPATIAL $OLD6 --set train.learning_rate=1e-3 --set train.first_steps=3 --reward shapes_graded --epochs 30"
  [demo]="$V1 $OLD6 --epochs 40"
  [demo_lr5e-4]="$V1 $OLD6 --epochs 40 --set train.learning_rate=5e-4"
  # section 6: the shipped base (builtin:shapes, = runs/pretrain/nocb)
  [h_demo]="$OLD6 --epochs 40"
  [h_demo80]="$OLD6 --epochs 80"
  [h_k8p8]="$OLD6 --epochs 40 --k 8 --set sample.prompts_per_batch=8"
  [h_lr2e-3]="$OLD6 --epochs 40 --set train.learning_rate=2e-3"
  [h_succ]="$OLD6 --epochs 40 --reward shapes_success"
  [h_1x1_lr3e-3]="$OLD6 --epochs 100 --set train.inner_epochs=1 --set train.minibatches=1 --set train.learning_rate=3e-3"
  [h_xattn]="$OLD6 --epochs 40 $XATTN"
  [h_cbtrain]="$OLD6 --epochs 40 --prompts shapes:color_binding_train --set run.eval_prompts=shapes:color_binding_unseen-val"
  [h_tf05_e70]="$OLD6 --epochs 70 --set train.timestep_fraction=0.5"
  # section 7: fresh samples, one pass of 16 updates per 256-image batch
  [h_fresh64]="$FRESH --epochs 40"
  [h_fresh64_80]="$FRESH --epochs 80"
  [h_fresh64_eta05]="$FRESH --epochs 40 --set sample.eta=0.5"
  [h_fresh64_loostd]="$FRESH --epochs 40 --set train.loo_std=group"
  [h_fresh128]="$FRESH --set sample.prompts_per_batch=128 --epochs 30"
  [h_fresh64_lr2e-3]="$FRESH --epochs 40 --set train.learning_rate=2e-3"
  [h_sp_graded_first3]="$FRESH $SPATIAL --reward shapes_graded --set train.first_steps=3 --epochs 150 --set run.eval_every=10"
  # section 8: cheaper epochs, the text encoder, a decaying learning rate, K = 2
  [h_tf05]="$FRESH --epochs 60 --set train.timestep_fraction=0.5"
  [h_te]="$FRESH --epochs 40 --set model.train_text_encoder=true"
  [h_lin2e-3]="$FRESH --epochs 40 --set train.learning_rate=2e-3 --set train.lr_schedule=linear"
  [h_k2p128]="$FRESH --epochs 40 --k 2 --set sample.prompts_per_batch=128"
  # section 9: LoRA capacity, a wider trust region
  [h_r16]="$FRESH --epochs 40 --set model.lora_rank=16 --set model.lora_alpha=16"
  [h_clip2x]="$FRESH --epochs 40 --set train.clip_range=1.875e-3"
  # section 11: spatial RL from the base with the vertical relations only (build it first: reproduce.sh
  # zsnr_spA650_fix); the docs' runs were stopped at the epoch their table gives (sp650_dense ran at 2 threads)
  [sp650_dense]="$SP650 --epochs 180"
  [sp650_success]="$SP650 --epochs 120 --reward shapes_success"
  [sp650_graded]="$SP650 --epochs 120 --reward shapes_graded"
  [sp650_success_te]="$SP650 --epochs 100 --reward shapes_success --set model.train_text_encoder=true"
  [sp650_success_first3]="$SP650 --epochs 100 --reward shapes_success --set train.first_steps=3"
  [sp650_success_k16]="$SP650 --epochs 100 --reward shapes_success --k 16 --set sample.prompts_per_batch=16"
  [sp650_success_lr3e-3]="$SP650 --epochs 80 --reward shapes_success --set train.learning_rate=3e-3"
  # section 12: noise-aware step weights (train.step_weight_power), on the demo and on spatial relations from a
  # rebuilt curriculum base (reproduce.sh zsnr_spA800_fix)
  [h_w1]="$FRESH --epochs 35 --set train.step_weight_power=1"
  [sp800_success]="$SP800 --epochs 60 --reward shapes_success"
  [sp800_success_w1]="$SP800 --epochs 60 --reward shapes_success --set train.step_weight_power=1"
  [sp1000_success]="$SP1000 --epochs 60 --reward shapes_success"
  [sp1000_success_w1]="$SP1000 --epochs 60 --reward shapes_success --set train.step_weight_power=1"
  [sp800_success_sptrain]="--model runs/pretrain/zsnr_spA800_fix --prompts shapes:spatial_train --set run.eval_prompts=shapes:spatial_unseen-val --set run.eval_every=10 --epochs 60 --reward shapes_success"
  [sp1000_success_w1_sptrain]="--model runs/pretrain/zsnr_spA1000_fix --prompts shapes:spatial_train --set run.eval_prompts=shapes:spatial_unseen-val --set run.eval_every=10 --epochs 60 --reward shapes_success --set train.step_weight_power=1"
  [sp1000_success_w1_cos]="$SP1000 --epochs 60 --reward shapes_success --set train.step_weight_power=1 --set train.lr_schedule=cosine"
  # section 14: the dense reward, a twice longer annealed run, the text encoder trained too (and its uniform-weights control)
  [sp1000_dense_w1_cos]="$SP1000 --epochs 60 --reward shapes --set train.step_weight_power=1 --set train.lr_schedule=cosine"
  [sp1000_success_w1_cos120]="$SP1000 --epochs 120 --reward shapes_success --set train.step_weight_power=1 --set train.lr_schedule=cosine"
  [sp1000_success_w1_cos_te]="$SP1000 --epochs 60 --reward shapes_success --set train.step_weight_power=1 --set train.lr_schedule=cosine --set model.train_text_encoder=true"
  [sp1000_success_cos_te]="$SP1000 --epochs 60 --reward shapes_success --set train.lr_schedule=cosine --set model.train_text_encoder=true"
  [spall_w1_cos]="$SPALL --epochs 60 $W1COS"
  [spall_w1_cos_te]="$SPALL --epochs 60 $W1COS --set model.train_text_encoder=true"
  [spall_w1_cos_lr2]="$SPALL --epochs 60 $W1COS --set train.learning_rate=2e-3"
  [spall_w1_cos_te_lr2]="$SPALL --epochs 60 $W1COS --set model.train_text_encoder=true --set train.learning_rate=2e-3"
  # section 16: K = 8 images per prompt, 16 updates of 32 samples per epoch (twice the images per update)
  [spall_w1_cos_te_lr2_k8]="$K8 --epochs 60"
  # the same over 45 epochs, alone on the 2 cores (run.threads=2): 46 min, inside the issue's 60 minutes
  [spall_w1_cos_te_lr2_k8e45]="$K8 --epochs 45 --set run.threads=2"
  # section 17: the 60-epoch row alone on the 2 cores with one UNet call per minibatch (the CPU default of
  # train.chunk_size since 2026-12-02; seeds 1 and 2 of the row above ran at the old default, 32, one thread each)
  [spall_w1_cos_te_lr2_k8t2]="$K8 --epochs 60 --set run.threads=2"
  # + linear warmup over the first 96 of 960 updates (6 epochs)
  [spall_w1_cos_te_lr2_k8w96]="$K8 --epochs 60 --set train.lr_warmup_updates=96 --set run.threads=2"
  # section 21: the same K = 8 run on the shipped spatial base (a later --model wins)
  [spk8ship]="$K8 --model builtin:shapes-spatial --epochs 60"
  [spk8ship_unet]="$K8 --model builtin:shapes-spatial --set model.train_text_encoder=false --epochs 60"
  # section 22: the same with the pretraining's 520 seen spatial prompts added to the 216 training phrasings
  [spk8union]="$K8 --model builtin:shapes-spatial --prompts tuning_prompts:spatial_unseen_and_seen --epochs 60"
  # ... and with only the seen prompts of the three color pairs the training pairs lack (orange+red, orange+yellow,
  # red+yellow: 144 prompts)
  [spk8cover]="$K8 --model builtin:shapes-spatial --prompts tuning_prompts:spatial_unseen_color_complete --epochs 60"
  # section 23: the same with a KL penalty toward the base (beta 0.1; every drawn pair trained, one more UNet forward each)
  [spk8kl01]="$K8 --model builtin:shapes-spatial --set train.kl_coef=0.1 --epochs 60"
  [spk8kl003]="$K8 --model builtin:shapes-spatial --set train.kl_coef=0.03 --epochs 60"
  [spk8kl001]="$K8 --model builtin:shapes-spatial --set train.kl_coef=0.01 --epochs 60"
  [spk8kl003lr3]="$K8 --model builtin:shapes-spatial --set train.kl_coef=0.03 --set train.learning_rate=3e-3 --epochs 60"  # section 25
  # section 27: the hue-graded reward on the beta 0.03 command, and at beta 0.01
  [spk8kl003hue]="$K8 --model builtin:shapes-spatial --set train.kl_coef=0.03 --reward shapes_hue --epochs 60"
  [spk8kl001hue]="$K8 --model builtin:shapes-spatial --set train.kl_coef=0.01 --reward shapes_hue --epochs 60"  # its advantages are 3.5x smaller
  # section 28: noise-aware step weights squared (more of the update on the layout-deciding first steps), and LoRA on
  # the UNet's convolutions and feed-forward layers too (the attention projections hold a few % of its weights)
  [spk8kl003p2]="$K8 --model builtin:shapes-spatial --set train.kl_coef=0.03 --set train.step_weight_power=2 --epochs 60"
  [spk8kl003wide]="$K8 --model builtin:shapes-spatial --set train.kl_coef=0.03 --set model.lora_target_modules=to_k,to_q,to_v,to_out.0,proj_in,proj_out,ff.net.0.proj,ff.net.2,conv1,conv2 --epochs 60"
  # section 28: section 24's command alone on the 2 cores (its time against the target's 60 minutes)
  [spk8kl003t2]="$K8 --model builtin:shapes-spatial --set train.kl_coef=0.03 --epochs 60 --set run.threads=2"
  # section 29: the same over 90 epochs (the step annealed over 90): the most that fits the target's hour alone on
  # the 2 cores at section 28's 0.6 min per epoch
  [spk8kl003e90]="$K8 --model builtin:shapes-spatial --set train.kl_coef=0.03 --epochs 90"
  # section 30: section 24's command on the spatial base rebuilt with a 1,250-step phase (the PRETRAIN entry)
  [spk8kl003_spA1250_fix]="$K8 --model runs/pretrain/zsnr_spA1250_fix --set train.kl_coef=0.03 --epochs 60"
  # section 30: the same with two passes over each sampled batch (a probe, stopped after epoch 20's evaluation)
  [spk8kl003_spA1250_fix_ie2_s1]="$K8 --model runs/pretrain/zsnr_spA1250_fix --set train.kl_coef=0.03 --epochs 60 --set train.inner_epochs=2 --seed 1 --set run.threads=2"
  # section 31: the same at a constant step (the cosine annealed it to 0, and the clip stopped acting, by epoch 50)
  [spk8kl003c_spA1250_fix]="$K8 --model runs/pretrain/zsnr_spA1250_fix --set train.kl_coef=0.03 --epochs 60 --set train.lr_schedule=constant"
  # section 31: section 30's command with K = 16 images of 32 prompts per epoch (the same 512 images): a group of a
  # prompt the base draws right 3% of the time holds a success, and so a nonzero advantage, 39% of the time (K = 8: 22%)
  [spk16kl003_spA1250_fix]="$K8 --model runs/pretrain/zsnr_spA1250_fix --set train.kl_coef=0.03 --epochs 60 --set sample.k=16 --set sample.prompts_per_batch=32 --set run.threads=2"
  # section 31: section 30's command without the KL (how fast the training pairs move when nothing holds them back)
  [spk8_spA1250_fix]="$K8 --model runs/pretrain/zsnr_spA1250_fix --epochs 60 --set run.threads=2"
  # section 32: the same with more distinct training combinations (the 520 seen pairs too), or with the seen pairs
  # of the three color contrasts the 27 training pairs lack (one thread each, two side by side)
  [spk8union_spA1250_fix]="$K8 --model runs/pretrain/zsnr_spA1250_fix --prompts tuning_prompts:spatial_unseen_and_seen --epochs 60"
  [spk8cover_spA1250_fix]="$K8 --model runs/pretrain/zsnr_spA1250_fix --prompts tuning_prompts:spatial_unseen_color_complete --epochs 60"
  # section 32: the union over twice the epochs (the step annealed over 120), since it trains each of its prompts less often
  [spk8union120_spA1250_fix]="$K8 --model runs/pretrain/zsnr_spA1250_fix --prompts tuning_prompts:spatial_unseen_and_seen --epochs 120"
  # section 32: the union with the unseen pairs drawn 45% of the time instead of 29% (each phrasing listed twice)
  [spk8union2_spA1250_fix]="$K8 --model runs/pretrain/zsnr_spA1250_fix --prompts tuning_prompts:spatial_unseen_twice_and_seen --epochs 60"
  # section 33: the same with twice the prompts per epoch (128 x K = 8, 16 updates of 64): less gradient noise per step
  # (= `diffrl train --config shapes_spatial`, whose base builtin:shapes-spatial2 is runs/pretrain/zsnr_spA1250_fix)
  [spk8union2b128_spA1250_fix]="$K8 --model runs/pretrain/zsnr_spA1250_fix --prompts tuning_prompts:spatial_unseen_twice_and_seen --epochs 60 --set sample.prompts_per_batch=128"
  # section 34: the same, passing over (p = 0.8) each drawn prompt whose images all had a zero advantage when last drawn
  # (= `diffrl train --config shapes_spatial --set sample.skip_zero_advantage=0.8`)
  [spk8union2b128skip08_spA1250_fix]="$K8 --model runs/pretrain/zsnr_spA1250_fix --prompts tuning_prompts:spatial_unseen_twice_and_seen --epochs 60 --set sample.prompts_per_batch=128 --set sample.skip_zero_advantage=0.8"
  # section 34: 192 prompts per epoch (16 updates of 96), stopped after epoch 5 to make room for the row above
  [spk8union2b192_spA1250_fix]="$K8 --model runs/pretrain/zsnr_spA1250_fix --prompts tuning_prompts:spatial_unseen_twice_and_seen --epochs 60 --set sample.prompts_per_batch=192"
  # section 35: the preset on two processes (torchrun + gloo, one thread each, PROCS below) with 96 prompts each: 192
  # prompts per epoch in 16 updates of 96 (48 per process), the preset's evaluation schedule
  [spatial_ddp2x96]="--config shapes_spatial --set sample.prompts_per_batch=96 --set run.eval_every=10"
  # section 36: the preset with its success graded by hue (each object's fill distance from its named color), two runs
  # at a time at one thread each
  [spatial_successhue]="--config shapes_spatial --reward shapes_success_hue --set run.eval_every=10"
  # section 37: the preset for 40 epochs (its step annealed over the 40), two runs at a time at one thread each, for a
  # soup of two inside the hour
  [spatial_e40]="--config shapes_spatial --epochs 40 --set run.eval_every=10"
  # section 38: the preset keeping every epoch's checkpoint (docs/tuning/trajectory_average.py averages them), and
  # the same with the dense score added to the success reward; two runs at a time at one thread each
  # (seeds 2 and 3 of spatial_snap: section 39, side by side for the pair soups and their timing)
  [spatial_snap]="--config shapes_spatial --set run.eval_every=10 --set run.save_every=1 --set run.keep_checkpoints=60"
  [spatial_dense]="--config shapes_spatial --reward shapes_success,shapes --set run.eval_every=10 --set run.save_every=1 --set run.keep_checkpoints=60"
  # section 39: LoRA rank 16 on the spatial preset, alpha 32 (scale 2) so that a step of B moves B @ A about as far
  # per element as at rank 4 (peft's Gaussian A has std 1 / rank)
  [spatial_r16]="--config shapes_spatial --set model.lora_rank=16 --set model.lora_alpha=32 --set run.eval_every=10 --set run.save_every=1 --set run.keep_checkpoints=60"
  # section 18: the demo since 2026-12-02 (`diffrl train`: 20 epochs, the text encoder trained too on builtin:shapes)
  # and the demo it replaced (35 epochs, UNet only), alone on the 2 cores
  [demo_te20]="--epochs 20 --set model.train_text_encoder=true --set run.threads=2"
  [demo_unet35]="--epochs 35 $UNET_ONLY --set run.threads=2"
  # section 19: one change each from demo_te20 (one thread, two runs at a time; held-out evaluation every 10 epochs as the demo)
  [demo_te20_lr2]="--epochs 20 --set model.train_text_encoder=true --set run.eval_every=10 --set train.learning_rate=2e-3"
  [demo_te20_lr2cos]="--epochs 20 --set model.train_text_encoder=true --set run.eval_every=10 --set train.learning_rate=2e-3 --set train.lr_schedule=cosine"
  [demo_te20_all]="--epochs 20 --set model.train_text_encoder=true --set run.eval_every=10 --prompts shapes:color_binding_unseen-train-all"
  [demo_te20_k8]="--epochs 20 --set model.train_text_encoder=true --set run.eval_every=10 --set sample.k=8 --set sample.prompts_per_batch=32"
  # section 19: the demo trained on its 10 orange-triangle prompts only (can RL learn the combination at all?)
  [demo_te20_ot]="--epochs 20 --set model.train_text_encoder=true --set run.eval_every=10 --prompts tuning_prompts:orange_triangle_train --set run.eval_prompts=shapes:color_binding_unseen-val"
  # section 20: the demo for 40 epochs (section 20 ran demo_te20 and continued it with --resume RUN --epochs 30, then
  # 40, evaluating in between: the same computation at a constant step), its step cosine-annealed over the 40 epochs,
  # and two rewards
  [demo_te40]="--epochs 40 --set model.train_text_encoder=true --set run.eval_every=10"
  [demo_cos40]="--epochs 40 --set model.train_text_encoder=true --set run.eval_every=10 --set train.lr_schedule=cosine"
  [demo_te20_hue]="--epochs 20 --set model.train_text_encoder=true --set run.eval_every=10 --reward shapes_hue"
  [demo_te20_mix]="--epochs 20 --set model.train_text_encoder=true --set run.eval_every=10 --reward shapes,shapes_success"
  # section 26: the demo at one thread (its reference here), and the same with section 24's KL penalty toward the base
  [demo_1t]="--epochs 20 --set run.eval_every=10"
  [demo_kl003]="--epochs 20 --set run.eval_every=10 --set train.kl_coef=0.03"
)
# Seed replicates: NAME_sN is NAME's row with --seed N.
declare -A SEEDS=([demo]="1" [demo_lr5e-4]="1" [old_defaults]="1" [h_demo]="1" [h_fresh64]="1 2 3 4"
  [h_fresh64_loostd]="1" [h_fresh128]="1" [h_fresh64_lr2e-3]="1" [h_tf05]="1" [h_te]="1 2 3" [h_lin2e-3]="1" [h_w1]="1"
  [h_k2p128]="1" [h_r16]="1" [h_clip2x]="1 2 3"
  [sp1000_success_w1_cos]="1" [sp1000_success_w1_cos_te]="1 2" [spall_w1_cos]="1 2" [spall_w1_cos_te_lr2]="1 2" [spall_w1_cos_te_lr2_k8]="1 2" [spall_w1_cos_te_lr2_k8e45]="1 2" [spall_w1_cos_te_lr2_k8w96]="1 2" [demo_te20]="1 2 3 4" [demo_te20_all]="1 2"
  [demo_te40]="1 2" [demo_cos40]="1 2 3" [demo_te20_hue]="1" [demo_te20_mix]="1"
  [spk8ship]="1 2" [spk8ship_unet]="2" [spk8union]="1 2" [spk8cover]="2" [spk8kl003]="1 2" [spk8kl003wide]="1" [spk8kl003_spA1250_fix]="1" [spk8kl003c_spA1250_fix]="1 2" [spk8_spA1250_fix]="1" [spk8union_spA1250_fix]="1 2" [spk8union2_spA1250_fix]="1 2 3" [spk8union2b128_spA1250_fix]="1 2" [spk8union2b128skip08_spA1250_fix]="1 2" [spatial_ddp2x96]="1 2" [spatial_successhue]="1" [spatial_e40]="1 2 3 4 5" [spatial_snap]="1 2 3" [spatial_dense]="1" [spatial_r16]="1")
# Rows run by several processes on one machine (torchrun + gloo; torchrun gives each process one thread); a row's
# seed replicates run as it does.
declare -A PROCS=([spatial_ddp2x96]=2)
for base in "${!SEEDS[@]}"; do
  for seed in ${SEEDS[$base]}; do
    RUNS[${base}_s$seed]="${RUNS[$base]} --seed $seed"
    if [[ -v PROCS[$base] ]]; then PROCS[${base}_s$seed]=${PROCS[$base]}; fi
  done
done
if (($#)); then names=("$@"); else names=("${!PRETRAIN[@]}" "${!RUNS[@]}"); fi  # base models first
pretrain_model() {  # build runs/pretrain/$1 unless it exists, after the model its --init names
  local init
  [[ -f runs/pretrain/$1/pretrain_config.json ]] && return
  init=$(sed -n 's|.*--init runs/pretrain/\([^ ]*\).*|\1|p' <<< "${PRETRAIN[$1]}")
  [[ -n $init ]] && pretrain_model "$init"
  # shellcheck disable=SC2086
  diffrl shapes pretrain --out "runs/pretrain/$1" --threads 1 ${PRETRAIN[$1]}
}
for name in "${names[@]}"; do
  if [[ -v PRETRAIN[$name] ]]; then
    pretrain_model "$name"
    continue
  fi
  launch=(diffrl)
  [[ -v PROCS[$name] ]] && launch=(torchrun --standalone --nproc_per_node "${PROCS[$name]}" -m diffrl.cli)
  # shellcheck disable=SC2086
  "${launch[@]}" train --out "runs/study/$name" --set run.threads=1 --set run.eval_every=5 --set run.progress=false ${RUNS[$name]}
done
