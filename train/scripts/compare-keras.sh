#!/usr/bin/env bash
# Training and inference images/s of delphi-train beside Keras/TensorFlow CPU,
# measured one after the other on this machine (same networks, batch 64,
# SGD with momentum and weight decay, Fashion-MNIST for small-cnn, random
# 32x32x3 images for MiniONN and ResNet-32).
#
#   train/scripts/compare-keras.sh            # installs tensorflow-cpu in a venv
#   TF_PYTHON=/path/to/python train/scripts/compare-keras.sh
#
# Writes results/bench/train-keras.json (the reference) and
# results/bench/train.json (ours, with the ratios), and prints the table.
# Shared machines vary by up to ±20 % from one run to the next: each side
# keeps its best of ROUNDS (default 2) timed passes. Both sides train on
# 64 x STEPS (default 100) images per pass: Keras's fit() has a fixed cost
# per call (~0.4 s here) that smaller passes would charge to it.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS="${ROUNDS:-2}"
STEPS="${STEPS:-100}"
if [ -z "${TF_PYTHON:-}" ]; then
  VENV="${TF_VENV:-target/tf-venv}"
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "tensorflow-cpu==2.21.0"
  fi
  TF_PYTHON="$VENV/bin/python"
fi
cargo build --release -q -p delphi-train
echo "Keras/TensorFlow ($ROUNDS rounds)..." >&2
TF_CPP_MIN_LOG_LEVEL=2 "$TF_PYTHON" train/scripts/keras_bench.py \
  --train-images $((64 * STEPS)) --rounds "$ROUNDS" --out results/bench/train-keras.json
echo "delphi-train ($ROUNDS rounds)..." >&2
target/release/delphi-train bench --steps "$STEPS" --rounds "$ROUNDS" \
  --compare results/bench/train-keras.json --out results/bench/train.json
