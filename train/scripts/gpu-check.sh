#!/usr/bin/env bash
# GPU check: training throughput on the GPU backends, one ResNet-32 epoch and
# a reduced planner benchmark, on a machine with a GPU that may have neither
# network access nor a Rust toolchain.
#
# Prepare on a build machine (with the CUDA toolkit for `cuda`, or without
# for `wgpu` only):
#
#   cargo build --release -p delphi-train -p delphi-planner --features wgpu,cuda
#   mkdir -p gpu-kit/bin gpu-kit/data
#   cargo build --release -p delphi-cli
#   cp target/release/delphi-train target/release/delphi-plan target/release/delphi gpu-kit/bin/
#   cp results/cost-model.json gpu-kit/   # the planner's prices (else calibrated there)
#   cp train/scripts/gpu-check.sh gpu-kit/
#   cp /usr/share/datasets/fashion-mnist/*.gz gpu-kit/data/fashion-mnist/
#   # optional, for the ResNet-32 epoch: CIFAR-10's binary files
#   cp cifar-10-batches-bin/*.bin gpu-kit/data/cifar10/
#
# (`--features cuda` downloads an LLVM bundle from GitHub while building —
# Burn's cubecl-cuda → cubecl-llvm → tracel-llvm-bundler — so build it where
# GitHub is reachable; the CUDA toolkit is not needed to build, the driver and
# NVRTC are needed to run.) Then copy gpu-kit/ to the GPU machine and run `gpu-kit/gpu-check.sh`. It
# writes gpu-kit/results/bench/train-gpu.json (both devices' images/s with the
# GPU's name), gpu-kit/results/train/resnet32-gpu/ (the epoch) and
# gpu-kit/results/plan-bench/gpu/ (the planner benchmark), and a log. Copy
# results/ back into the repository to commit the figures.
#
# DEVICES (default "cuda wgpu") picks the backends; a backend that fails is
# reported in the log and in train-gpu.json, not skipped silently.
set -uo pipefail
KIT="$(cd "$(dirname "$0")" && pwd)"
BIN="${BIN:-$KIT/bin}"
DATA="${DATA:-$KIT/data}"
OUT="${OUT:-$KIT/results}"
DEVICES="${DEVICES:-cuda wgpu}"
mkdir -p "$OUT/bench" "$OUT/train" "$OUT/plan-bench"
LOG="$OUT/gpu-check.log"
: >"$LOG"
say() { echo "$*" | tee -a "$LOG" >&2; }

gpu_name="unknown"
if command -v nvidia-smi >/dev/null 2>&1; then
  gpu_name="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)"
fi
say "GPU: $gpu_name"
say "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
export DELPHI_DATA="$DATA/fashion-mnist"

entries=()
for dev in $DEVICES; do
  say "== delphi-train bench --device $dev"
  if "$BIN/delphi-train" bench --device "$dev" --archs small-cnn,minionn,resnet32 \
      --steps ${STEPS:-30} --rounds ${ROUNDS:-2} --out "$OUT/bench/train-gpu-$dev.json" 2>>"$LOG" | tee -a "$LOG"; then
    entries+=("\"$dev\": $(cat "$OUT/bench/train-gpu-$dev.json")")
  else
    say "delphi-train bench --device $dev FAILED (see above)"
    entries+=("\"$dev\": {\"error\": \"failed; see gpu-check.log\"}")
  fi
done
{
  printf '{\n"gpu": "%s",\n' "$gpu_name"
  (IFS=,; printf '%s\n' "${entries[*]}")
  printf '}\n'
} >"$OUT/bench/train-gpu.json"
say "wrote $OUT/bench/train-gpu.json"

first="${DEVICES%% *}"
if ls "$DATA/cifar10/"data_batch_*.bin >/dev/null 2>&1; then
  say "== one ResNet-32 epoch on CIFAR-10 ($first)"
  /usr/bin/time -v "$BIN/delphi-train" train --dataset cifar10 --data-dir "$DATA/cifar10" \
    --arch resnet32 --epochs 1 --device "$first" --out "$OUT/train/resnet32-gpu" --restart \
    --quiet 2>&1 | tee -a "$LOG" || say "ResNet-32 epoch FAILED"
else
  say "no CIFAR-10 files in $DATA/cifar10: the ResNet-32 epoch was not run"
fi

say "== reduced planner benchmark (issue 7's, on $first)"
cost=()
[ -f "$KIT/cost-model.json" ] && cost=(--cost-model "$KIT/cost-model.json")
PATH="$BIN:$PATH" "$BIN/delphi-plan" bench "${cost[@]}" --dataset fashion-mnist --arch small-cnn --thresholds 0.85 \
  --strategies pbt,delphi --population 4 --epochs 2 --base-epochs 2 --train-limit 20000 \
  --device "$first" --no-verify --quiet --out "$OUT/plan-bench/gpu" 2>&1 | tee -a "$LOG" \
  || say "planner benchmark FAILED"
say "done: $OUT"
