#!/usr/bin/env python3
"""Two herald builds compared by `herald bench`, in alternating pairs.

  scripts/bench-ab.py 3 /tmp/before/herald target/release/herald -- \\
      --broadcasts 10000 --scenario burst --scenario steady --steady-secs 10

  scripts/bench-ab.py 3 'TOKIO_WORKER_THREADS=1 target/release/herald' \\
      target/release/herald -- --scenario steady

Runs A, B, A, B... PAIRS times each (the shared machine's speed drifts, so
alternating keeps the drift out of the comparison), with the bench
arguments after `--` and `--json`. A and B are a binary, optionally
preceded by VAR=value words set for that side only. Prints each run's
figures per scenario, then the medians: confirmed deliveries per second,
fraction of the no-store baseline, herald's CPU seconds per 1,000
deliveries, on PostgreSQL its backends' too, and the p99 from accept to
first attempt (ms). Every run is bounded by the bench's own limits.
"""
import json
import os
import statistics
import subprocess
import sys

FIGURES = [
    ("confirmed/s", lambda r: r["confirmed_per_sec"]),
    ("fraction", lambda r: r.get("fraction_of_baseline")),
    ("cpu/1k", lambda r: r["cpu_secs_per_1000_deliveries"]),
    ("backends/1k", lambda r: r.get("postgres_backends_cpu_secs_per_1000_deliveries")),
    ("p99 first ms", lambda r: r["first_attempt_ms"]["p99"]),
]


def side(spec):
    words = spec.split()
    env = dict(os.environ)
    while words and "=" in words[0]:
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    if len(words) != 1:
        sys.exit(f"expected [VAR=value ...] BINARY, got {spec!r}")
    return words[0], env


def run(binary, env, args):
    done = subprocess.run(
        [binary, "bench", *args, "--json"], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"{binary} bench failed ({done.returncode}):\n{done.stderr[-2000:]}")
    reports = json.loads(done.stdout)
    return {r["scenario"]: {name: get(r) for name, get in FIGURES} for r in reports}


def main():
    if len(sys.argv) < 5 or sys.argv[4] != "--":
        sys.exit(__doc__)
    pairs = int(sys.argv[1])
    sides = [side(sys.argv[2]), side(sys.argv[3])]
    args = sys.argv[5:]
    runs = {"A": [], "B": []}
    for pair in range(pairs):
        for label, (binary, env) in zip("AB", sides):
            figures = run(binary, env, args)
            runs[label].append(figures)
            print(label, pair + 1, json.dumps(figures), flush=True)
    for label in "AB":
        print(f"median {label}")
        for scenario in runs[label][0]:
            medians = {}
            for name, _ in FIGURES:
                values = [r[scenario][name] for r in runs[label] if r[scenario][name] is not None]
                medians[name] = round(statistics.median(values), 4) if values else None
            print(f"  {scenario}: {medians}")


if __name__ == "__main__":
    main()
