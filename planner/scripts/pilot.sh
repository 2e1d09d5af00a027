#!/usr/bin/env bash
# Pilot of a planner benchmark network: does placement decide on it? Trains
# the all-ReLU base, then makes every activation quadratic starting from it
# with our recipe (gradual swap over 10–60 % of the run, distillation from
# the base, gradient clipping), and writes both validation accuracies.
# The quadratic run uses learning rate $QUAD_LR (default 0.002) and clips
# gradients at $QUAD_CLIP (default 0.5): on resnet26, all-quadratic from
# the trained base diverged (loss NaN) at the default 0.05 and at 0.01 with
# clipping at 1.
# A network is a good benchmark when the all-quadratic network loses at
# least 2 points against the base at the benchmark's data size.
#
#   planner/scripts/pilot.sh [ARCH] [TRAIN_IMAGES] [EPOCHS] [SEED]
#   (defaults: resnet26 20000 4 1)
#
# Writes results/plan-bench/pilot-<arch>-<images>-s<seed>.json; the run
# folders stay under $PILOT_DIR (default: a temporary folder). Needs the
# release binaries and Debian's dataset-fashion-mnist.
set -euo pipefail
cd "$(dirname "$0")/../.."
arch=${1:-resnet26}
images=${2:-20000}
epochs=${3:-4}
seed=${4:-1}
dir=${PILOT_DIR:-$(mktemp -d)}
train=target/release/delphi-train
common=(--dataset fashion-mnist --train-limit "$images" --epochs "$epochs" --seed "$seed" --quiet)

start=$(date +%s)
$train train --arch "$arch" "${common[@]}" --out "$dir/relu"
base_s=$(( $(date +%s) - start ))
acts=$(python3 -c "import json,sys; n=json.load(open(sys.argv[1])); print(sum(1 for l in n['layers'] if l['type']=='activation'))" "$dir/relu/model.json")
quads=$(printf 'Q%.0s' $(seq 1 "$acts"))
start=$(date +%s)
$train train --arch "$arch" "${common[@]}" --placement "$quads" \
  --init "$dir/relu/model.json" --teacher "$dir/relu/model.json" --swap 0.1,0.6 \
  --lr "${QUAD_LR:-0.002}" --grad-clip "${QUAD_CLIP:-0.5}" --out "$dir/quad"
quad_s=$(( $(date +%s) - start ))

out="results/plan-bench/pilot-$arch-$images-s$seed.json"
mkdir -p "$(dirname "$out")"
python3 - "$dir" "$out" "$arch" "$images" "$epochs" "$seed" "$base_s" "$quad_s" "${QUAD_LR:-0.002}" "${QUAD_CLIP:-0.5}" <<'PY'
import json, sys
d, out, arch, images, epochs, seed, base_s, quad_s, lr, clip = sys.argv[1:]
def metrics(run):
    m = json.load(open(f"{d}/{run}/metrics.json"))
    return {"valid_accuracy": m["history"][-1]["valid_accuracy"],
            "test_accuracy_float": m["test_accuracy_float"],
            "test_accuracy_fixed": m["test_accuracy_fixed"],
            "train_seconds": m["seconds"]}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
relu, quad = metrics("relu"), metrics("quad")
doc = {
    "rerun": f"planner/scripts/pilot.sh {arch} {images} {epochs} {seed}",
    "cpu_model": cpu,
    "arch": arch, "train_images": int(images), "epochs": int(epochs), "seed": int(seed),
    "all_relu": relu, "all_quadratic_ours": quad,
    "all_quadratic_recipe": {"swap": "0.1,0.6", "distill_from": "the all-ReLU base",
                             "lr": float(lr), "grad_clip": float(clip)},
    "valid_points_lost": 100 * (relu["valid_accuracy"] - quad["valid_accuracy"]),
    "seconds": {"base": int(base_s), "all_quadratic": int(quad_s)},
}
json.dump(doc, open(out, "w"), indent=2)
print(json.dumps(doc, indent=2))
PY
