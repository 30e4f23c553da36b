"""The table of scripts/load.sh from wrk's JSON summaries (scripts/load/wrk.lua), the ratios
fluxd/bare and the goals of issues 4 and 11 (the Postgres rows: scripts/load.sh --postgres).
Usage: report.py WORK CONNECTIONS DURATION RATE [JSON_OUT]"""

import json
import os
import sys

work, conns, duration, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
json_out = sys.argv[5] if len(sys.argv) > 5 else ""

ROWS = [
    ("bare axum POST", "bare_submit", None),
    ("fluxd submit (durable)", "fluxd_submit", "bare_submit"),
    ("bare axum GET", "bare_get", None),
    ("fluxd get_result", "fluxd_get", "bare_get"),
    ("fluxd submit, Postgres", "pg_submit", "bare_submit"),
    ("fluxd get_result, Postgres", "pg_get", "bare_get"),
    ("fluxd submit, worker on", "worker_submit", "bare_submit"),
    ("fluxd get_result, worker on", "worker_get", "bare_get"),
]


def load(name):
    path = os.path.join(work, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


report = {"connections": conns, "duration_s": duration, "rate_per_s": rate, "runs": {}}
for mode, title in [("sat", f"flat out, {conns} connections, {duration} s"),
                    ("rate", f"offered ~{rate} req/s over {conns} connections, {duration} s")]:
    print(title)
    print(f"  {'':30}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}"
          f"{'fluxd/bare':>12}")
    for label, name, against in ROWS:
        m = load(f"{name}.{mode}")
        if m is None:
            continue
        base = load(f"{against}.{mode}") if against else None
        m["ratio_vs_bare"] = m["rps"] / base["rps"] if base else None
        report["runs"][f"{name}.{mode}"] = m
        ratio = f"{m['ratio_vs_bare']:.1%}" if base and mode == "sat" else ""
        print(f"  {label:30}{m['rps']:9.0f}{m['p50_us'] / 1e3:9.2f}{m['p99_us'] / 1e3:9.2f}"
              f"{m['max_us'] / 1e3:9.1f}{sum(m['errors'].values()):8d}{ratio:>12}")

runs = report["runs"]
goals = {
    "durable submit >= 25% of bare": runs["fluxd_submit.sat"]["ratio_vs_bare"] >= 0.25,
    "get_result >= 50% of bare": runs["fluxd_get.sat"]["ratio_vs_bare"] >= 0.50,
    f"p99 < 10 ms at {rate} req/s": max(runs["fluxd_submit.rate"]["p99_us"],
                                        runs["fluxd_get.rate"]["p99_us"]) < 10_000,
}
if "pg_submit.sat" in runs:
    goals["Postgres: durable submit >= 25% of bare"] = runs["pg_submit.sat"]["ratio_vs_bare"] >= 0.25
    goals["Postgres: get_result >= 50% of bare"] = runs["pg_get.sat"]["ratio_vs_bare"] >= 0.50
    goals[f"Postgres: p99 < 10 ms at {rate} req/s"] = max(
        runs["pg_submit.rate"]["p99_us"], runs["pg_get.rate"]["p99_us"]) < 10_000
if "worker_submit.rate" in runs:
    goals[f"p99 < 10 ms at {rate} req/s, worker on"] = max(
        runs["worker_submit.rate"]["p99_us"], runs["worker_get.rate"]["p99_us"]) < 10_000
report["goals"] = goals
for name, ok in goals.items():
    print(f"goal {name:50} {'met' if ok else 'MISSED'}")
group = os.path.join(work, "group_commit.txt")
if os.path.exists(group) and os.path.getsize(group):
    with open(group) as f:
        counters = dict(line.split() for line in f if line.strip())
    commits, writes = float(counters["fluxd_store_commits_total"]), float(
        counters["fluxd_store_writes_total"])
    report["group_commit"] = {"commits": commits, "writes": writes}
    if commits:
        print(f"group commit over the submit rounds (flat out and at the fixed rate): "
              f"{writes / commits:.1f} writes per commit "
              f"({writes:.0f} writes, {commits:.0f} commits)")
finished = os.path.join(work, "worker_finished.txt")
if os.path.exists(finished) and os.path.getsize(finished):
    with open(finished) as f:
        lines = f.read().split()
    print("tasks the worker finished during its round: " + " ".join(lines))
if json_out:
    with open(json_out, "w") as f:
        json.dump(report, f, indent=2)
