#!/usr/bin/env bash
# One search run by each executor, one after the other on this machine:
# in this process, 2 local worker processes, Ray with one unit in flight
# (2 CPUs per unit: what a unit costs on Ray beyond running it here) and
# Ray with every unit in flight (1 CPU each, 2 at once on a 2-CPU head).
# Every run starts from the same trained base and must write the same
# members.csv (checked).
#
#   planner/scripts/bench-executors.sh          # starts its own Ray head (.ci/ray)
#
# Writes results/bench/executors.json (wall time per run; per unit: the
# worker's own seconds, the executor's, and their difference, the
# overhead; the controller's seconds per interval) and prints a table.
# The search: small-cnn on 12,000 Fashion-MNIST images, 4 members × 4
# epochs, 2 units per epoch (32 units of ~94 steps), no halving.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p delphi-planner --bin delphi-plan
bin=target/release/delphi-plan
work="$(mktemp -d /tmp/delphi-bench-exec.XXXXXX)"
ray_dir="$work/ray"
trap '.ci/ray stop "$ray_dir"; rm -rf "$work"' EXIT
read -r address python < <(.ci/ray start "$ray_dir")
common=(--dataset fashion-mnist --accuracy 0.85 --halve-at 1 --base-epochs 2
        --intervals-per-epoch 2 --train-limit 12000 --valid-size 2000 --test-limit 2000
        --quiet --cost-model results/cost-model.json)
args=("${common[@]}" --population 4 --epochs 4)
run() {
  local name="$1"; shift
  local out="$work/$name"
  if [ "$name" != inline ]; then
    mkdir -p "$out"
    cp -r "$work/inline/base" "$out/base"
  else
    # The base is trained once, outside the timed run.
    "$bin" "${common[@]}" --epochs 1 --population 2 --out "$work/base-only" >/dev/null 2>&1
    mkdir -p "$out"
    cp -r "$work/base-only/base" "$out/base"
  fi
  echo "$name..." >&2
  local t0 t1
  t0=$(date +%s.%N)
  "$bin" "${args[@]}" --out "$out" "$@" >/dev/null 2>"$work/$name.log"
  t1=$(date +%s.%N)
  echo "$name $(python3 -c "print($t1 - $t0)")" >>"$work/walls"
}
run inline --workers 1
run local-2 --workers 2
run ray-1 --executor ray --ray-address "$address" --ray-python "$python" --workers 1 --ray-cpus 2
run ray-2 --executor ray --ray-address "$address" --ray-python "$python" --ray-cpus 1
python3 - "$work" <<'EOF'
import csv, json, os, sys, platform
work = sys.argv[1]
walls = dict(l.split() for l in open(os.path.join(work, "walls")))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
ref = open(os.path.join(work, "inline", "members.csv")).read()
out = {"cpu": cpu, "cores": os.cpu_count(), "ray": "2.60.0",
       "search": "small-cnn, Fashion-MNIST 12,000 training images, 4 members x 4 epochs, "
                 "2 units per epoch (32 units), no halving",
       "rerun": "planner/scripts/bench-executors.sh", "runs": []}
for name in ["inline", "local-2", "ray-1", "ray-2"]:
    rows = list(csv.DictReader(open(os.path.join(work, name, "units.csv"))))
    unit = [float(r["unit_s"]) for r in rows]
    wall = [float(r["wall_s"]) for r in rows]
    batches = {}
    for r in rows:
        batches[r["interval"]] = float(r["batch_write_s"]) + float(r["batch_read_s"])
    same = open(os.path.join(work, name, "members.csv")).read() == ref
    out["runs"].append({
        "executor": name,
        "search_wall_s": float(walls[name]),
        "units": len(rows),
        "unit_s_mean": sum(unit) / len(unit),
        "executor_s_mean": sum(wall) / len(wall),
        "overhead_s_per_unit": sum(w - u for w, u in zip(wall, unit)) / len(rows),
        "controller_s_per_interval": sum(batches.values()) / len(batches),
        "same_members_csv_as_inline": same,
    })
base = out["runs"][0]["search_wall_s"]
for r in out["runs"]:
    r["speedup_vs_inline"] = base / r["search_wall_s"]
os.makedirs("results/bench", exist_ok=True)
json.dump(out, open("results/bench/executors.json", "w"), indent=2)
print(f"{'executor':10} {'search s':>9} {'x inline':>8} {'unit s':>7} {'exec s':>7} {'overhead/unit':>13} {'ctrl/interval':>13} same")
for r in out["runs"]:
    print(f"{r['executor']:10} {r['search_wall_s']:9.1f} {r['speedup_vs_inline']:8.2f} {r['unit_s_mean']:7.2f} "
          f"{r['executor_s_mean']:7.2f} {r['overhead_s_per_unit']:13.2f} {r['controller_s_per_interval']:13.2f} "
          f"{r['same_members_csv_as_inline']}")
print(f"({cpu}, {os.cpu_count()} cores); wrote results/bench/executors.json")
EOF
