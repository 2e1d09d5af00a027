#!/usr/bin/env python3
"""Prints the cost model's validation figures as the Markdown tables of
docs/cost-model.md, from the files the validation scripts write:

    results/bench/calibration-check.json  (delphi cost calibrate --check)
    results/bench/cost-validation.json    (cost-model/scripts/cost-validation.sh)
    results/bench/link-validation.json    (cost-model/scripts/link-validation.sh)

    python3 cost-model/scripts/tables.py

Standard library only. The docs' tables are this script's output, pasted.
"""
import json
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def load(name):
    path = os.path.join(ROOT, "results", "bench", name)
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        sys.exit(f"{path}: {e} (run the script that writes it first)")


def pct(x):
    return f"{x:+.1f} %".replace("-", "−")


def exact(e):
    return "exact" if abs(e) < 0.01 else pct(e)


def main():
    check = load("calibration-check.json")
    print("Two calibrations back to back (`delphi cost calibrate --check`):\n")
    print("| plan | online (1st, 2nd) | apart | offline (1st, 2nd) | apart |")
    print("|---|---|---|---|---|")
    for p in check["predictions"]:
        print(
            f"| {p['plan']} | {p['online_s'][0]:.4f} s, {p['online_s'][1]:.4f} s | "
            f"{100 * p['online_apart']:.0f} % | {p['offline_s'][0]:.3f} s, "
            f"{p['offline_s'][1]:.3f} s | {100 * p['offline_apart']:.0f} % |"
        )

    cv = load("cost-validation.json")
    print(f"\nPredicted against the median of three `delphi verify` runs ({cv['cpu_model']}, "
          f"{cv['cores']} cores):\n")
    print("| network | online time | offline time | online bytes | offline bytes |")
    print("|---|---|---|---|---|")
    for r in cv["networks"]:
        e = r["error_pct"]
        print(f"| {r['network']} | {pct(e['online_s'])} | {pct(e['offline_s'])} | "
              f"{exact(e['online_bytes'])} | {exact(e['offline_bytes'])} |")

    lv = load("link-validation.json")
    print(f"\nOver a shaped link ({lv['cpu_model']}, {lv['cores']} cores):\n")
    print("| network | link | online time | offline time | bytes |")
    print("|---|---|---|---|---|")
    for r in lv["runs"]:
        e = r["error_pct"]
        b = max(abs(e["online_bytes"]), abs(e["offline_bytes"]))
        print(f"| {r['network']} | {r['bandwidth']}, {r['rtt']} | {pct(e['online_s'])} | "
              f"{pct(e['offline_s'])} | {exact(b)} |")


if __name__ == "__main__":
    main()
