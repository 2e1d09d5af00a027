#!/usr/bin/env bash
# Pilot of a planner benchmark workload: does placement decide on it?
# Runs the benchmark's two controls on one seed, at the benchmark's budget
# and recipe (member learning rates drawn, clipping, distillation from the
# base, the range check after training):
#   relu-control  the all-ReLU base fine-tuned for the whole budget;
#   quad-control  every activation quadratic, trained with our recipe and no
#                 search (a member that diverges or fails the range check is
#                 no plan).
# and writes how many points the best all-quadratic plan loses against the
# fine-tuned all-ReLU network on split B (held out from both runs), split A
# and test. A workload is a good benchmark when all-quadratic loses at least
# 2 points on split B: otherwise the cheapest plan is nearly as accurate as
# the dearest and there is nothing for a placement search to decide.
#
#   [BASE_EPOCHS=N] planner/scripts/pilot.sh [ARCH] [TRAIN_IMAGES] [SEED]
#   (defaults: resnet38 10000 1; population 6 × 2 epochs, base 4 epochs,
#   the benchmark's settings; BASE_EPOCHS trains the base longer, and the
#   output's name then ends in -b<N>)
#
# (The threshold, 80 %, only picks which plan the bench's summary names; the
# controls' searches do not depend on it.)
# Writes results/plan-bench/pilot-<arch>-<images>-s<seed>.json; the bench
# folder stays under $PILOT_DIR (default: a temporary folder). Needs the
# release binaries, Debian's dataset-fashion-mnist and python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
arch=${1:-resnet38}
images=${2:-10000}
seed=${3:-1}
dir=${PILOT_DIR:-$(mktemp -d)}
model=${COST_MODEL:-$PWD/results/cost-model.json}
base_epochs=${BASE_EPOCHS:-4}
suffix=""
if [ "$base_epochs" != 4 ]; then suffix="-b$base_epochs"; fi

start=$(date +%s)
target/release/delphi-plan bench --arch "$arch" --dataset fashion-mnist \
  --train-limit "$images" --valid-size 5000 --select-size 5000 --base-epochs "$base_epochs" \
  --population 6 --epochs 2 --intervals-per-epoch 4 --thresholds 0.8 \
  --truncation faithful-leaky --strategies relu-control,quad-control \
  --seed "$seed" --seeds 1 --no-verify --cost-model "$model" --out "$dir" --quiet
seconds=$(( $(date +%s) - start ))

out="results/plan-bench/pilot-$arch-$images-s$seed$suffix.json"
mkdir -p "$(dirname "$out")"
python3 - "$dir" "$out" "$arch" "$images" "$seed" "$seconds" "$base_epochs" <<'PY'
import csv, json, sys
d, out, arch, images, seed, seconds, base_epochs = sys.argv[1:]
rows = list(csv.DictReader(open(f"{d}/fronts.csv")))
acts = max(len(r["placement"]) for r in rows)
def best(variant, quads):
    plans = [r for r in rows if r["variant"] == variant and int(r["quads"]) == quads]
    if not plans:
        return None
    r = max(plans, key=lambda r: float(r["split_a_accuracy"]))
    return {k: float(r[k]) for k in ("split_a_accuracy", "split_b_accuracy",
            "test_accuracy_float", "test_accuracy_fixed", "predicted_online_s")}
relu, quad = best("relu-control", 0), best("quad-control", acts)
lost = None if quad is None else {
    k: round(100 * (relu[k] - quad[k]), 2)
    for k in ("split_a_accuracy", "split_b_accuracy", "test_accuracy_fixed")}
bench = json.load(open(f"{d}/bench.json"))
doc = {
    "rerun": (f"BASE_EPOCHS={base_epochs} " if base_epochs != "4" else "")
             + f"planner/scripts/pilot.sh {arch} {images} {seed}",
    "base_epochs": int(base_epochs),
    "cpu_model": bench["cpu_model"], "cores": bench["cores"],
    "arch": arch, "activation_layers": acts, "train_images": int(images), "seed": int(seed),
    "budget_member_epochs": bench["budget_member_epochs"],
    "relu_control": relu,
    "quad_control": quad,
    "points_lost": lost,
    "decides": lost is None or lost["split_b_accuracy"] >= 2.0,
    "search_seconds": round(bench["search_seconds_total"]),
    "seconds_of_this_command": int(seconds),
}
json.dump(doc, open(out, "w"), indent=2)
print(json.dumps(doc, indent=2))
PY
