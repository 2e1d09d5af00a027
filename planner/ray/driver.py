"""delphi-plan's Ray driver: runs a search's units of work as Ray tasks.

`delphi-plan --executor ray` starts this script once per search (it is
built into the binary and written to the run folder) and talks to it over
its standard input and output, one JSON line each way:

  driver -> {"ready": true, "ray": "2.60.0", "nodes": 1, "cpus": 2.0, "gpus": 0.0}
  planner -> {"units": ["runs/x/units/ab12/m0", ...]}
  driver -> {"results": [{"unit": "...", "ok": true, "seconds": 6.1},
             {"unit": "...", "ok": false, "error": "...", "seconds": 9.0}], "seconds": 12.3}

A unit is one `delphi-plan step --unit DIR` process, run on whichever node
Ray places the task, in the planner's working directory (so every node must
see the run folder at the same path: a shared filesystem). A task whose
process fails or is killed, or whose node dies, is retried by Ray
(--retries); every attempt appends a line to the unit's attempts.log, which
the planner reads back into its lineage log. When the planner goes away
(its end of the pipe closes) the driver exits and Ray cancels what is left.

Only Ray's own API is used (ray.init, ray.remote, ray.wait): a task is what
a unit is, and Ray schedules it by the CPUs and GPUs it asks for.
"""

import argparse
import json
import os
import subprocess
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--address", required=True, help="Ray cluster address (host:port or auto)")
    ap.add_argument("--program", required=True, help="delphi-plan on the workers")
    ap.add_argument("--cwd", required=True, help="working directory of every unit")
    ap.add_argument("--cpus", type=float, default=1.0, help="CPUs per unit")
    ap.add_argument("--gpus", type=float, default=0.0, help="GPUs per unit")
    ap.add_argument("--retries", type=int, default=2, help="retries per unit")
    ap.add_argument("--in-flight", type=int, default=0, help="units running at once (0: all)")
    a = ap.parse_args()

    # The protocol goes to the real stdout; anything else printed (Ray's
    # own messages included) goes to stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    import ray  # imported after the redirection: its banner goes to stderr

    ray.init(address=a.address, log_to_driver=False, namespace="delphi-plan")
    res = ray.cluster_resources()
    proto.write(json.dumps({
        "ready": True,
        "ray": ray.__version__,
        "nodes": len([n for n in ray.nodes() if n.get("Alive")]),
        "cpus": res.get("CPU", 0.0),
        "gpus": res.get("GPU", 0.0),
    }) + "\n")

    threads = str(max(1, int(a.cpus)))

    @ray.remote(max_retries=a.retries, retry_exceptions=True)
    def step(unit: str) -> str:
        env = dict(os.environ)
        env["RAYON_NUM_THREADS"] = threads
        p = subprocess.run(
            [a.program, "step", "--unit", unit],
            cwd=a.cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if p.returncode != 0:
            why = f"signal {-p.returncode}" if p.returncode < 0 else f"exit status {p.returncode}"
            try:  # the planner reads it back into its lineage log
                with open(os.path.join(a.cwd, unit, "attempts.log"), "a") as f:
                    f.write(f"failed {why}\n")
            except OSError:
                pass
            raise RuntimeError(f"delphi-plan step {unit}: {why}: {p.stderr[-2000:]}")
        return unit

    task = step.options(num_cpus=a.cpus, num_gpus=a.gpus)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        units = json.loads(line)["units"]
        t0 = time.time()
        results = {}
        pending = {}
        submitted = {}
        queue = list(units)
        limit = a.in_flight if a.in_flight > 0 else len(units)
        while queue or pending:
            while queue and len(pending) < limit:
                u = queue.pop(0)
                submitted[u] = time.time()
                pending[task.remote(u)] = u
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                u = pending.pop(ref)
                try:
                    ray.get(ref)
                    results[u] = {"unit": u, "ok": True}
                except Exception as e:  # the task failed every attempt
                    results[u] = {"unit": u, "ok": False, "error": str(e)[-4000:]}
                results[u]["seconds"] = time.time() - submitted[u]
        proto.write(json.dumps({
            "results": [results[u] for u in units],
            "seconds": time.time() - t0,
        }) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
