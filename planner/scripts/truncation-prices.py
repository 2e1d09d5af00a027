#!/usr/bin/env python3
"""What a quadratic layer costs against a ReLU under each truncation.

Prices (`delphi cost predict`) a network description all-ReLU and
all-quadratic (every activation 0.2·x² + 0.5·x + 0.2), with the exact
truncations (the default) and the leaky one-bit ones (`faithful-leaky`), and
writes the four totals as JSON. Architecture only: the weights matter only
through the exact circuits' proven bounds, so pass the trained plan.

    planner/scripts/truncation-prices.py PLAN.json [COST_MODEL] > out.json

Needs the release `delphi` binary (target/release/delphi).
"""
import copy, json, os, subprocess, sys, tempfile

plan, model = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
net = json.load(open(plan))
if net.get("weights_file"):
    net["weights_file"] = os.path.join(os.path.dirname(os.path.abspath(plan)), net["weights_file"])
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
delphi = os.path.join(root, "target", "release", "delphi")


def price(quad, trunc):
    m = copy.deepcopy(net)
    for l in m["layers"]:
        if l["type"] == "activation":
            # ReLUs keep the plan's circuits (the exact windows `auto` gave it).
            if quad:
                l.clear()
                l.update({"type": "activation", "kind": "quad", "a": 0.2, "b": 0.5, "c": 0.2})
    m["fixed_point"]["truncation"] = trunc
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(m, f)
    cmd = [delphi, "cost", "predict", "--json", "--plan", f.name]
    if model:
        cmd += ["--cost-model", model]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    os.unlink(f.name)
    return json.loads(out.stdout)["total"]


res = {"plan": plan, "cost_model": model}
for trunc in ["exact", "faithful-leaky"]:
    for quad in [False, True]:
        res[f"{'all_quadratic' if quad else 'all_relu'}_{trunc}"] = price(quad, trunc)
json.dump(res, sys.stdout, indent=2)
print()
