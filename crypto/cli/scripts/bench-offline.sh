#!/usr/bin/env bash
# The offline phase of this checkout against a base revision's, measured in
# one run on this machine: both `delphi` binaries run the same plan with
# `delphi verify` (server and client in one process, loopback TCP),
# alternating between rounds, each run INPUTS predictions (one offline phase
# each). Records offline bytes (exact) and seconds, and online seconds.
#
#   [OUT=FILE] crypto/cli/scripts/bench-offline.sh BASE [PLAN] [ROUNDS] [INPUTS]
#
# BASE is a git revision (e.g. the commit before a change); PLAN defaults to
# ResNet-32 with leaky ReLU windows (32×32 Fashion-MNIST, 303,104 ReLUs);
# ROUNDS to 3, INPUTS to 2. The base is built from a temporary worktree
# into this checkout's target directory (its dependencies are reused), then
# this checkout's binary is rebuilt (its sources touched first, see below).
# Writes $OUT (default results/bench/offline.json) and prints a table.
set -euo pipefail
cd "$(dirname "$0")/../../.."
base="${1:?usage: bench-offline.sh BASE [PLAN] [ROUNDS] [INPUTS]}"
plan="${2:-results/plan/fashion-mnist-32-resnet32-windows/windows.json}"
rounds="${3:-3}"
inputs="${4:-2}"
out="${OUT:-results/bench/offline.json}"
repo="$PWD"
work="$(mktemp -d /tmp/delphi-bench-offline.XXXXXX)"
trap 'git -C "$repo" worktree remove --force "$work/base" 2>/dev/null; rm -rf "$work"' EXIT
rev="$(git rev-parse --short "$base")"
git worktree add -q --detach "$work/base" "$base"
echo "building the base ($rev)..." >&2
(cd "$work/base" && CARGO_TARGET_DIR="$repo/target" cargo build --release -q -p delphi-cli --bin delphi)
cp target/release/delphi "$work/delphi-base"
echo "building this checkout..." >&2
# Cargo names a workspace's units by paths relative to its root and judges
# them fresh by modification times: after the base's build, this checkout's
# older sources would look built. Make them newer.
git ls-files -z -- '*.rs' '*.toml' '*.py' | xargs -0 touch
cargo build --release -q -p delphi-cli --bin delphi
cp target/release/delphi "$work/delphi-this"
for r in $(seq "$rounds"); do
  if [ $((r % 2)) = 1 ]; then ways="base this"; else ways="this base"; fi
  for way in $ways; do
    echo "round $r: $way..." >&2
    "$work/delphi-$way" verify --plan "$plan" --inputs "$inputs" --json >"$work/$way-$r.json"
  done
done
python3 - "$work" "$plan" "$rounds" "$inputs" "$base" "$rev" \
  "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!results' || echo +changes)" "$out" <<'EOF'
import json, os, platform, statistics, sys
work, plan, rounds, inputs, base, rev, this, path = sys.argv[1:9]
rounds, inputs = int(rounds), int(inputs)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
out = {"plan": plan, "cpu_model": cpu, "cores": os.cpu_count(), "rounds": rounds,
       "inputs_per_run": inputs, "base_revision": rev, "this_revision": this,
       "rerun": ("" if path == "results/bench/offline.json" else f"OUT={path} ")
       + f"crypto/cli/scripts/bench-offline.sh {base} {plan} {rounds} {inputs}", "ways": {}}
for way in ["base", "this"]:
    runs = [json.load(open(f"{work}/{way}-{r}.json")) for r in range(1, rounds + 1)]
    infs = [i for d in runs for i in d["inferences"]]
    off_s = [i["offline_s"] for i in infs]
    on_s = [i["online_s"] for i in infs]
    off_b = sorted({i["offline_bytes"] for i in infs})
    he = infs[0]["offline_he"]
    out["ways"][way] = {
        "offline_bytes": off_b, "offline_he_sent_bytes": he["sent_bytes"],
        "offline_he_received_bytes": he["received_bytes"],
        "offline_s": off_s, "offline_s_median": statistics.median(off_s), "offline_s_best": min(off_s),
        "online_s": on_s, "online_s_median": statistics.median(on_s),
        # verify's verdict per run: every node within its stated bound
        # (exact plans: equal to the reference).
        "correct": [d["correct"] for d in runs],
    }
b, t = out["ways"]["base"], out["ways"]["this"]
out["offline_bytes_base_over_this"] = b["offline_bytes"][0] / t["offline_bytes"][0]
out["offline_s_median_this_over_base"] = t["offline_s_median"] / b["offline_s_median"]
out["online_s_median_this_over_base"] = t["online_s_median"] / b["online_s_median"]
os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
json.dump(out, open(path, "w"), indent=1)
print(f"{plan} on {cpu} ({os.cpu_count()} cores), {rounds} rounds x {inputs} predictions each way")
print(f"{'':8} {'offline MB':>11} {'HE sent MB':>11} {'HE recv MB':>11} {'offline s (median, best)':>26} {'online s (median)':>18}")
for way, w in out["ways"].items():
    print(f"{way:8} {w['offline_bytes'][0]/1e6:11.1f} {w['offline_he_sent_bytes']/1e6:11.1f} "
          f"{w['offline_he_received_bytes']/1e6:11.1f} {w['offline_s_median']:17.2f} {w['offline_s_best']:8.2f} "
          f"{w['online_s_median']:18.3f}")
print(f"offline bytes {out['offline_bytes_base_over_this']:.2f}x fewer; offline time x{out['offline_s_median_this_over_base']:.2f}; "
      f"online time x{out['online_s_median_this_over_base']:.2f}")
print(f"wrote {path}")
EOF
