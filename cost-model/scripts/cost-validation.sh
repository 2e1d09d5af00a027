#!/usr/bin/env bash
# Predicted beside measured costs for a fixed set of plans on this machine:
# each plan exported (random weights), run three times by
# `delphi verify --compare-cost --json`, the median measured time taken.
#
#   cost-model/scripts/cost-validation.sh
#
# Uses <results>/cost-model.json as it is (calibrate first:
# `delphi cost calibrate --check`); writes results/bench/cost-validation.json.
# Needs the release binaries and python3 (standard library only). ≈ 4 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
plans=(
  "small-cnn --classes 10"
  "small-cnn --classes 10 --placement RQR"
  "minionn --classes 10"
  "resnet14 --classes 10"
  "resnet32 --classes 100"
)
# (Random-weight plans with several quadratic layers are refused by the
# range check — their squares outgrow the field — so the quadratic plan
# here is small-cnn RQR; trained quadratic plans come from delphi-plan.)
i=0
for p in "${plans[@]}"; do
  # shellcheck disable=SC2086
  target/release/delphi export --arch $p --out "$tmp/$i.json" >/dev/null
  for r in 1 2 3; do
    target/release/delphi verify --plan "$tmp/$i.json" --compare-cost --json 2>"$tmp/err" > "$tmp/$i-$r.out" \
      || { cat "$tmp/err" >&2; exit 1; }
  done
  i=$((i + 1))
done
python3 - "$tmp" "${plans[@]}" <<'PY'
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
