#!/usr/bin/env bash
# The client's memory and online time with its garbled material held in
# memory and kept on disk (`delphi infer --keep-material memory|disk`),
# measured in one run on this machine: one `delphi serve` of the plan, then
# ROUNDS rounds, each one `infer` process per way (the order alternates
# between rounds), each process two predictions (two offline and two online
# phases).
#
#   crypto/cli/scripts/bench-client-memory.sh [PLAN] [ROUNDS]
#
# PLAN defaults to the all-ReLU ResNet-32 (32×32 Fashion-MNIST, full width,
# 303,104 ReLUs); ROUNDS to 3. Writes results/bench/client-memory.json
# (per way: every process's peak resident memory, every prediction's online
# and offline seconds; the best and median of each) and prints a table.
set -euo pipefail
cd "$(dirname "$0")/../../.."
plan="${1:-results/plan/fashion-mnist-32-resnet32-windows/full.json}"
rounds="${2:-3}"
cargo build --release -q -p delphi-cli --bin delphi
bin="$PWD/target/release/delphi"
work="$(mktemp -d /tmp/delphi-bench-mem.XXXXXX)"
port=$((20000 + RANDOM % 20000))
"$bin" serve --plan "$plan" --listen "127.0.0.1:$port" --plaintext --preprocess 1 \
  >"$work/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 120); do
  grep -q "^serving" "$work/serve.log" && break
  kill -0 $server 2>/dev/null || { cat "$work/serve.log" >&2; exit 1; }
  sleep 1
done
# Two inputs of the served network's shape, fixed.
python3 - "$plan" "$work/inputs.json" <<'EOF'
import json, random, sys
net = json.load(open(sys.argv[1]))
s = net["input"]
n = s["channels"] * s["height"] * s["width"]
random.seed(7)
json.dump([[random.random() for _ in range(n)] for _ in range(2)], open(sys.argv[2], "w"))
EOF
for r in $(seq "$rounds"); do
  if [ $((r % 2)) = 1 ]; then ways="memory disk"; else ways="disk memory"; fi
  for way in $ways; do
    echo "round $r: $way..." >&2
    "$bin" infer --connect "127.0.0.1:$port" --input "$work/inputs.json" --plaintext --json \
      --keep-material "$way" >"$work/$way-$r.json"
  done
done
python3 - "$work" "$plan" "$rounds" <<'EOF'
import json, os, platform, statistics, sys
work, plan, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
out = {"plan": plan, "cpu_model": cpu, "cores": os.cpu_count(), "rounds": rounds,
       "rerun": f"crypto/cli/scripts/bench-client-memory.sh {plan} {rounds}", "ways": {}}
classes = {}
for way in ["memory", "disk"]:
    runs = [json.load(open(f"{work}/{way}-{r}.json")) for r in range(1, rounds + 1)]
    peaks = [d["client_peak_rss_bytes"] for d in runs]
    preds = [p for d in runs for p in d["predictions"]]
    online = [p["online_s"] for p in preds]
    offline = [p["offline_s"] for p in preds]
    classes[way] = [[p["class"] for p in d["predictions"]] for d in runs]
    out["ways"][way] = {
        "client_peak_rss_bytes": peaks, "online_s": online, "offline_s": offline,
        "peak_rss_max_bytes": max(peaks),
        "online_best_s": min(online), "online_median_s": statistics.median(online),
        "offline_best_s": min(offline), "offline_median_s": statistics.median(offline),
    }
assert classes["memory"] == classes["disk"], classes
m, d = out["ways"]["memory"], out["ways"]["disk"]
out["online_median_ratio_disk_to_memory"] = d["online_median_s"] / m["online_median_s"]
out["online_best_ratio_disk_to_memory"] = d["online_best_s"] / m["online_best_s"]
out["offline_median_ratio_disk_to_memory"] = d["offline_median_s"] / m["offline_median_s"]
os.makedirs("results/bench", exist_ok=True)
json.dump(out, open("results/bench/client-memory.json", "w"), indent=2)
print(f"| material | client peak | online best / median | offline best / median |")
print(f"|---|---|---|---|")
for way in ["memory", "disk"]:
    w = out["ways"][way]
    print(f"| {way} | {w['peak_rss_max_bytes'] / 1e6:.0f} MB | {w['online_best_s']:.3f} / {w['online_median_s']:.3f} s"
          f" | {w['offline_best_s']:.1f} / {w['offline_median_s']:.1f} s |")
print(f"disk / memory, online median: {out['online_median_ratio_disk_to_memory']:.3f}; "
      f"offline median: {out['offline_median_ratio_disk_to_memory']:.3f}")
print(f"({cpu}, {os.cpu_count()} cores); wrote results/bench/client-memory.json")
EOF
