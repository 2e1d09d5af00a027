#!/usr/bin/env bash
# Predicted beside measured costs for a fixed set of plans on this machine
# (every kind the planner produces, an imported ONNX model among them):
# each plan run three times by
# `delphi verify --compare-cost --json`, the median measured time taken.
#
#   cost-model/scripts/cost-validation.sh
#
# Uses <results>/cost-model.json as it is (calibrate first:
# `delphi cost calibrate --check`); writes results/bench/cost-validation.json.
# Needs the release binaries and python3 (standard library only). ≈ 8 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# name | the command that writes the plan to $out. Random weights unless
# said; --bench-weights keeps deep quadratic plans in range (contractive
# quadratics, batch norm calibrated for the placement). Interval arithmetic
# cannot bound a chain of squares, so those plans run with --allow-overflow:
# their sampled peaks stay inside the range, and verify still checks every
# secure result against the fixed-point reference ("exact" below).
plans=(
  "small-cnn all-ReLU|export --arch small-cnn --classes 10"
  "small-cnn RQR|export --arch small-cnn --classes 10 --placement RQR --bench-weights"
  "minionn all-ReLU|export --arch minionn --classes 10"
  "resnet14 all-ReLU|export --arch resnet14 --classes 10"
  "resnet14 4 quadratic layers|export --arch resnet14 --classes 10 --quad-layers 4 --bench-weights"
  "resnet14 per-channel mixed|mixed"
  "resnet32 all-ReLU|export --arch resnet32 --classes 100"
  "resnet32 26 quadratic layers|export --arch resnet32 --classes 100 --quad-layers 26 --bench-weights"
  "resnet32 trained, exact reduced ReLUs|windows"
  "fm-cnn imported from ONNX (trained in PyTorch)|import crypto/onnx/tests/fixtures/fm-cnn.onnx"
)
names=()
i=0
for entry in "${plans[@]}"; do
  name=${entry%%|*}; cmd=${entry#*|}; out="$tmp/$i.json"
  names+=("$name")
  case $cmd in
    mixed)
      # Every other channel of the first six activation layers keeps ReLU,
      # the rest compute the bench quadratic.
      target/release/delphi export --arch resnet14 --classes 10 --bench-weights --out "$out" 2>/dev/null
      python3 - "$out" <<'PY'
import json, sys
net = json.load(open(sys.argv[1]))
acts = [l for l in net["layers"] if l["type"] == "activation"]
chans = {}
for k, l in enumerate(net["layers"]):  # channels entering each activation
    if l["type"] == "conv2d":
        last = l["out_channels"]
    if l["type"] == "activation":
        chans[k] = last
for k, l in enumerate(net["layers"]):
    if l["type"] == "activation" and k in list(chans)[:6]:
        c = chans[k]
        net["layers"][k] = {"type": "activation", "kind": "mixed",
                            "relu": [ch % 2 == 0 for ch in range(c)],
                            "a": [0.02] * c, "b": [0.25] * c, "c": [0.0] * c}
json.dump(net, open(sys.argv[1], "w"))
PY
      ;;
    windows)
      target/release/delphi-plan windows --mode auto --dataset fashion-mnist-32 \
        --arch results/plan/fashion-mnist-32-resnet32-windows/full.json --out "$out" >/dev/null
      ;;
    *)
      # shellcheck disable=SC2086
      target/release/delphi $cmd --out "$out" 2>/dev/null
      ;;
  esac
  allow=()
  case $cmd in *bench-weights*|mixed) allow=(--allow-overflow) ;; esac
  for r in 1 2 3; do
    target/release/delphi verify --plan "$out" "${allow[@]}" --compare-cost --json 2>"$tmp/err" > "$tmp/$i-$r.out" \
      || { cat "$tmp/err" >&2; exit 1; }
  done
  echo "$name: measured" >&2
  i=$((i + 1))
done
python3 - "$tmp" "${names[@]}" <<'PY'
import json, statistics, sys, subprocess
tmp, plans = sys.argv[1], sys.argv[2:]
model = json.load(open("results/cost-model.json"))["provenance"]
rows = []
for i, name in enumerate(plans):
    runs = [json.load(open(f"{tmp}/{i}-{r}.out")) for r in (1, 2, 3)]
    pred = runs[0]["predicted"]
    meas = {k: statistics.median(r["measured"][k] for r in runs) for k in pred}
    err = {k: 100.0 * (pred[k] - meas[k]) / meas[k] if meas[k] else 0.0 for k in pred}
    rows.append({"network": name, "predicted": pred, "measured_median_of_3": meas, "error_pct": err,
                 "exact": all(r["correct"] for r in runs)})
doc = {"rerun": "delphi cost calibrate --check; cost-model/scripts/cost-validation.sh",
       "cpu_model": model["cpu_model"], "cores": model["cores"], "networks": rows}
json.dump(doc, open("results/bench/cost-validation.json", "w"), indent=2)
for r in rows:
    e = r["error_pct"]
    print(f"{r['network']:<42} online {e['online_s']:+6.1f} %  offline {e['offline_s']:+6.1f} %  bytes {e['online_bytes']:+.2f} / {e['offline_bytes']:+.2f} %")
PY
