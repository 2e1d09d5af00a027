#!/usr/bin/env python3
"""Where a layer count and the cost disagree: what making each activation
layer quadratic saves, on loopback and on a slower link.

Prices (`delphi cost predict`) a network description with every activation
a ReLU (the plan's own circuits) and with every activation quadratic (the
given truncation), per layer, on loopback (the calibration's link) and on
the link given, and writes per activation layer its ReLUs and the online
seconds saved by making it quadratic on each link, the rank correlation
(Spearman) between ReLUs and saving, and the layers whose replacement costs
more than it saves. A planner that counts layers or ReLUs ranks layers by
the first column; one driven by the cost model by the saving.

    planner/scripts/layer-prices.py PLAN.json COST_MODEL BANDWIDTH RTT \
        [TRUNCATION] > out.json
    (e.g. ... 100Mbit 20ms faithful-leaky; TRUNCATION defaults to the plan's)

Needs the release `delphi` binary (target/release/delphi).
"""
import copy, json, os, subprocess, sys, tempfile

plan, model, bandwidth, rtt = sys.argv[1:5]
trunc = sys.argv[5] if len(sys.argv) > 5 else None
net = json.load(open(plan))
if net.get("weights_file"):
    net["weights_file"] = os.path.join(os.path.dirname(os.path.abspath(plan)), net["weights_file"])
if trunc:
    net["fixed_point"]["truncation"] = trunc
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
delphi = os.path.join(root, "target", "release", "delphi")
acts = [i for i, l in enumerate(net["layers"]) if l["type"] == "activation"]


def per_layer(quad, link):
    m = copy.deepcopy(net)
    for i in acts:
        if quad:
            m["layers"][i] = {"type": "activation", "kind": "quad", "a": 0.2, "b": 0.5, "c": 0.2}
        elif m["layers"][i].get("kind") != "relu":
            sys.exit(f"layer {i} is not a ReLU: pass the all-ReLU plan")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(m, f)
    cmd = [delphi, "cost", "predict", "--json", "--plan", f.name, "--cost-model", model] + link
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    os.unlink(f.name)
    d = json.loads(out.stdout)
    cost = {}
    for layer, ops, c in d["layers"]:
        if layer in acts:
            cost[layer] = c["online_s"]
    return cost, d["total"]["online_s"]


def ranks(v):
    order = sorted(range(len(v)), key=lambda i: v[i])
    r = [0.0] * len(v)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2
        i = j + 1
    return r


def spearman(a, b):
    ra, rb = ranks(a), ranks(b)
    n = len(a)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra) ** 0.5
    vb = sum((y - mb) ** 2 for y in rb) ** 0.5
    return cov / (va * vb)


def relus_per_layer():
    """Elements of each activation layer, from the layers' shapes."""
    inp = net["input"]
    shape = {-1: (inp["channels"], inp["height"], inp["width"])}
    for i, l in enumerate(net["layers"]):
        c, h, w = shape[l.get("input", i - 1)]
        t = l["type"]
        if t == "conv2d":
            k, s = l["kernel"], l["stride"]
            if l["padding"] == "same":
                h, w = -(-h // s), -(-w // s)
            else:
                h, w = (h - k) // s + 1, (w - k) // s + 1
            c = l["out_channels"]
        elif t == "avg_pool":
            k, s = l["kernel"], l["stride"]
            h, w = (h - k) // s + 1, (w - k) // s + 1
        elif t == "flatten":
            c, h, w = c * h * w, 1, 1
        elif t == "dense":
            c, h, w = l["out_features"], 1, 1
        shape[i] = (c, h, w)
    return {i: shape[i][0] * shape[i][1] * shape[i][2] for i in acts}


links = {"loopback": [], f"{bandwidth} {rtt}": ["--bandwidth", bandwidth, "--rtt", rtt]}
count = relus_per_layer()
out = {"rerun": "planner/scripts/layer-prices.py " + " ".join(sys.argv[1:]), "plan": plan, "truncation": net["fixed_point"].get("truncation"),
       "relus": {str(i): count[i] for i in acts}, "links": {}}
for name, link in links.items():
    r, r_total = per_layer(False, link)
    q, q_total = per_layer(True, link)
    saving = [r[i] - q[i] for i in acts]
    out["links"][name] = {
        "all_relu_online_s": r_total,
        "all_quad_online_s": q_total,
        "saving_s": dict(zip(map(str, acts), saving)),
        "relu_layer_s": dict(zip(map(str, acts), (r[i] for i in acts))),
        "layers_costing_more_as_quadratic": [i for i, s in zip(acts, saving) if s < 0],
        "spearman_relus_vs_saving": spearman([count[i] for i in acts], saving),
        # The cheapest placement on this link (the model adds layers up):
        # quadratic exactly where it saves.
        "cheapest_placement": "".join("Q" if x > 0 else "R" for x in saving),
        "cheapest_online_s": r_total - sum(x for x in saving if x > 0),
    }
json.dump(out, sys.stdout, indent=2)
print()
