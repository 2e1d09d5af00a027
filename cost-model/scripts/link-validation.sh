#!/usr/bin/env bash
# Predicted beside measured costs over a shaped link: `delphi serve` and
# `delphi infer` talk through `delphi relay` (a rate- and delay-shaping TCP
# relay: the kernels these machines run have no `netem` qdisc), at two
# settings, and `delphi cost predict --bandwidth --rtt` prices the same plan
# for the same link. Each prediction is run three times in separate
# sessions; the median of the phases' measured seconds is compared.
#
#   cost-model/scripts/link-validation.sh
#
# Uses <results>/cost-model.json as it is (calibrate first); writes
# results/bench/link-validation.json. Needs the release binaries and
# python3 (standard library only). ≈ 4 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=target/release/delphi
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# Waits until file $1 has a line matching $2 (the log line a process
# prints once it listens), or fails with what the process wrote.
wait_for() {
  for _ in $(seq 1 600); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "timed out waiting for '$2' in $1:" >&2
  cat "$1" >&2
  return 1
}

links=("1Gbit 0.5ms" "100Mbit 20ms")
plans=("small-cnn|--arch small-cnn --classes 10" "resnet14|--arch resnet14 --classes 10")
port=${DELPHI_LINK_PORT:-7990}
runs=3
rows=()
for plan in "${plans[@]}"; do
  name=${plan%%|*}; args=${plan#*|}
  # shellcheck disable=SC2086
  $bin export $args --out "$tmp/$name.json" 2>/dev/null
  python3 - "$tmp/$name.json" "$tmp/$name-input.json" <<'PY'
import json, random, sys
net = json.load(open(sys.argv[1]))
s = net["input"]
n = s["channels"] * s["height"] * s["width"]
random.seed(1)
json.dump([random.random() for _ in range(n)], open(sys.argv[2], "w"))
PY
  for link in "${links[@]}"; do
    read -r bw rtt <<<"$link"
    tag="$name-$bw-$rtt"
    $bin cost predict --plan "$tmp/$name.json" --bandwidth "$bw" --rtt "$rtt" --json \
      > "$tmp/$tag.pred" 2>/dev/null
    $bin serve --plan "$tmp/$name.json" --listen "127.0.0.1:$port" --sessions "$runs" --plaintext \
      2> "$tmp/$tag.serve" &
    pids+=($!)
    $bin relay --listen "127.0.0.1:$((port + 1))" --to "127.0.0.1:$port" \
      --bandwidth "$bw" --rtt "$rtt" 2> "$tmp/$tag.relay" &
    pids+=($!)
    wait_for "$tmp/$tag.serve" "^serving "
    wait_for "$tmp/$tag.relay" "^relaying "
    for r in $(seq 1 $runs); do
      $bin infer --connect "127.0.0.1:$((port + 1))" --input "$tmp/$name-input.json" --json --plaintext \
        > "$tmp/$tag-$r.out" 2> "$tmp/$tag-$r.err" || { cat "$tmp/$tag-$r.err" >&2; exit 1; }
    done
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
    rows+=("$name|$bw|$rtt|$tag")
    echo "$name over $bw, $rtt RTT: measured" >&2
    port=$((port + 2))
  done
done
python3 - "$tmp" "$runs" "${rows[@]}" <<'PY'
import json, statistics, sys
tmp, runs, rows = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
model = json.load(open("results/cost-model.json"))["provenance"]
out = []
for row in rows:
    name, bw, rtt, tag = row.split("|")
    pred = json.load(open(f"{tmp}/{tag}.pred"))["total"]
    preds = [json.load(open(f"{tmp}/{tag}-{r}.out"))["predictions"][0] for r in range(1, runs + 1)]
    meas = {k: statistics.median(p[k] for p in preds)
            for k in ("online_s", "offline_s", "online_bytes", "offline_bytes")}
    err = {k: 100.0 * (pred[k] - meas[k]) / meas[k] for k in meas}
    out.append({"network": f"{name} all-ReLU", "bandwidth": bw, "rtt": rtt,
                "predicted": {k: pred[k] for k in meas}, f"measured_median_of_{runs}": meas,
                "error_pct": err})
doc = {"rerun": "cost-model/scripts/link-validation.sh",
       "link": "delphi relay between delphi serve and delphi infer on loopback",
       "cpu_model": model["cpu_model"], "cores": model["cores"], "runs": out}
json.dump(doc, open("results/bench/link-validation.json", "w"), indent=2)
for r in out:
    e = r["error_pct"]
    print(f"{r['network']:<20} {r['bandwidth']:>8} {r['rtt']:>6}  online {e['online_s']:+6.1f} %"
          f"  offline {e['offline_s']:+6.1f} %  bytes {e['online_bytes']:+.2f} / {e['offline_bytes']:+.2f} %")
PY
