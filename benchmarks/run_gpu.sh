#!/usr/bin/env bash
# The GPU measurements of the README's "On a GPU" section, in one go (about 5 minutes on an H200):
#
#   OUT=results-folder bash benchmarks/run_gpu.sh
#
# Each step has its own time limit, so a slow one cannot take the others with it; JSON results and one log go to
# $OUT (default: benchmarks/results). The side-by-side run against the reference SAN is not here: it needs the
# reference code (MendelXu/SAN, run without detectron2 as architecture.md section 5.2 describes), which this
# repository does not ship.
set -u
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
LOG="$OUT/gpu_run.log"
step() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }
step "environment"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee -a "$LOG"
step "throughput sweep, bf16 agreement, post-processing at 20 / 847 classes"
timeout 150 python3 benchmarks/bench_throughput.py --device cuda --sections sweep,agreement,classes --warmup 2 \
    --repeats 8 --output "$OUT/throughput_cuda.json" 2>&1 | tee -a "$LOG"
step "batch-1 latency (eager, host syncs, CUDA graphs)"
timeout 120 python3 benchmarks/bench_throughput.py --device cuda --presets san-clip-vit-b16 --batches 1 \
    --dtypes bf16 --sections latency --output "$OUT/latency_cuda.json" 2>&1 | tee -a "$LOG"
step "preprocessing on the device"
timeout 60 python3 benchmarks/bench_preprocessing.py --device cuda --output "$OUT/preprocessing_cuda.json" 2>&1 \
    | tee -a "$LOG"
step "training"
timeout 150 python3 benchmarks/bench_training.py --device cuda --preset san-clip-vit-b16 --batch 32 --dtype bf16 \
    --seconds 20 --warmup 2 --workers 14 --output "$OUT/training_cuda.json" 2>&1 | tee -a "$LOG"
timeout 150 python3 benchmarks/bench_training.py --device cuda --preset pat-clip-vit-b16 --batch 16 --dtype bf16 \
    --seconds 20 --warmup 2 --workers 14 --output "$OUT/training_cuda.json" 2>&1 | tee -a "$LOG"
timeout 60 python3 benchmarks/bench_training.py --loader-only --seconds 15 --output "$OUT/training_loader.json" 2>&1 \
    | tee -a "$LOG"
step "done"
