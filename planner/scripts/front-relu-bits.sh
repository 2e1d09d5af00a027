#!/usr/bin/env bash
# Re-prices every front plan of a planner benchmark with its own reduced-ReLU
# windows: `delphi-plan windows --test` on each plan named in fronts.csv, then
# one CSV row per plan (predicted cost and fixed-point test accuracy, full
# width against windows, priced by the same cost model).
#
#   planner/scripts/front-relu-bits.sh results/plan-bench/fashion-mnist-resnet14
#
# Writes <bench>/fronts-relu-bits.csv (and the windowed plans under
# <bench>/relu-bits/). Needs the release binaries and python3 (standard
# library only, for the CSV). DATASET (default fashion-mnist) must be the
# benchmark's dataset.
set -euo pipefail
cd "$(dirname "$0")/../.."
bench="${1:?usage: $0 <plan-bench folder>}"
dataset="${DATASET:-fashion-mnist}"
out="$bench/relu-bits"
mkdir -p "$out"
files=$(python3 -c "
import csv, sys
seen = []
for r in csv.DictReader(open(sys.argv[1])):
    if r['file'] not in seen:
        seen.append(r['file'])
print(' '.join(seen))" "$bench/fronts.csv")
for f in $files; do
  dst="$out/$(echo "$f" | tr '/' '_')"
  target/release/delphi-plan windows --arch "$bench/$f" --dataset "$dataset" --test --out "$dst" >/dev/null
  echo "$f"
done
python3 - "$bench" <<'PY'
import csv, json, os, sys
bench = sys.argv[1]
rows, seen = [], {}
for r in csv.DictReader(open(os.path.join(bench, 'fronts.csv'))):
    seen.setdefault(r['file'], r)
for f, r in seen.items():
    m = json.load(open(os.path.join(bench, 'relu-bits', f.replace('/', '_'))))['metadata']['relu_bits']
    full, red = m.get('predicted_full', {}), m.get('predicted_reduced', {})
    rows.append({
        'file': f, 'strategy': r['strategy'], 'placement': r['placement'], 'relus': r['relus'],
        'windows': m['windows'],
        'predicted_online_s_full': full.get('online_s'),
        'predicted_online_s_windows': red.get('online_s'),
        'predicted_online_mb_full': full.get('online_bytes', 0) / 1e6,
        'predicted_online_mb_windows': red.get('online_bytes', 0) / 1e6,
        'predicted_offline_mb_full': full.get('offline_bytes', 0) / 1e6,
        'predicted_offline_mb_windows': red.get('offline_bytes', 0) / 1e6,
        'fixed_test_accuracy_full': m.get('fixed_test_accuracy_full'),
        'fixed_test_accuracy_windows': m.get('fixed_test_accuracy_reduced',
                                             m.get('fixed_test_accuracy_full')),
        'fixed_valid_accuracy_full': m.get('fixed_valid_accuracy_full'),
        'fixed_valid_accuracy_windows': m.get('fixed_valid_accuracy_reduced'),
    })
with open(os.path.join(bench, 'fronts-relu-bits.csv'), 'w', newline='') as fh:
    w = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
    w.writeheader()
    w.writerows(rows)
print(f"wrote {os.path.join(bench, 'fronts-relu-bits.csv')} ({len(rows)} plans)")
PY
