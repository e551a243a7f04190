#!/usr/bin/env bash
# One RL epoch on a GPU, diffrl vs TRL 0.23.1's DDPOTrainer, on a random pipeline of SD 2.x's real sizes
# (512x512 images, 64x64x4 latents, 866M-parameter UNet): docs/performance.md, "On a GPU".
#   benchmarks/bench_gpu.sh OUT_DIR            (TRL 0.23.1, diffusers, peft importable by python3)
# 1. bf16 (both sides' mixed precision; diffrl's frozen weights in bf16), FLOP counts and the bf16 matmul roof.
#    diffrl trains 8 (sample, step) pairs per UNet call (TRL's call shape: 16 rows with CFG; the default 32 pairs
#    stores 4x the activations), then with gradient checkpointing, with 8-bit AdamW (needs bitsandbytes), and
#    32 pairs per call with checkpointing.
# 2. fp32 (same math as the CPU tables), diffrl (8 pairs per call) and TRL.
# PIPE=tiny STEPS=2 benchmarks/bench_gpu.sh OUT_DIR is a dry run of the same sequence on a CPU.
set -u
out=${1:?usage: bench_gpu.sh OUT_DIR}
mkdir -p "$out"
here=$(cd "$(dirname "$0")" && pwd)
export PYTHONPATH="$here/../src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
common=(--pipelines "${PIPE:-sd2-512}" --rounds 1 --warmup 1 --epochs 1 --steps "${STEPS:-20}" --threads "${THREADS:-16}"
        --cache "${CACHE:-/tmp/bench_gpu_cache}" --keep-going --timeout 300)
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
$PY "$here/bench_epoch.py" "${common[@]}" --mixed-precision bf16 --flops --impls diffrl,trl \
    --variants chunk_size=8 chunk_size=8,train.gradient_checkpointing=true chunk_size=8,train.optimizer=adamw8bit \
    chunk_size=32,train.gradient_checkpointing=true --out "$out/bf16.json"
$PY "$here/bench_epoch.py" "${common[@]}" --mixed-precision no --flops --impls diffrl,trl --variants chunk_size=8 \
    --out "$out/fp32.json"
