#!/usr/bin/env bash
# The exact circuits beside the full-width and the leaky ones, in one run on
# one machine: the trained ResNet-32 of results/plan/fashion-mnist-32-resnet32-windows
# under the real protocol with full-width ReLUs (full.json), the exact
# windows `delphi-plan windows` (--mode auto) gives it, and the leaky
# reduced windows (windows.json); then the ReLU layer benchmark at those
# widths.
#
#   crypto/cli/scripts/exact-circuits-bench.sh
#
# Writes results/bench/resnet32-fmnist32-{full,exact,windows}.json and
# results/bench/relu.json. Needs the release binaries
# (cargo build --release --workspace --bins); ≈ 3 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../../.."
plans=results/plan/fashion-mnist-32-resnet32-windows
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
target/release/delphi-plan windows --mode auto --dataset fashion-mnist-32 \
  --arch "$plans/full.json" --out "$tmp/exact.json"
for v in full exact windows; do
  plan="$plans/$v.json"
  [ "$v" = exact ] && plan="$tmp/exact.json"
  target/release/delphi bench network --plan "$plan" --inputs 2 \
    --out "results/bench/resnet32-fmnist32-$v.json"
  # The exact plan lives in a temporary folder: name the script instead.
  sed -i 's#"rerun": ".*"#"rerun": "crypto/cli/scripts/exact-circuits-bench.sh"#' \
    "results/bench/resnet32-fmnist32-$v.json"
done
target/release/delphi bench relu --count 100000 \
  --bits full,0..25,0..28,0..32,0..35,16..25,16..27 --out results/bench/relu.json
