"""Prints the GPU check's table from `fluxd bench` and diffusers_bench.py JSON files and the
peak GPU memory sampled while each ran. Usage: table.py FLUXD_JSON DIFFUSERS_JSON FLUXD_MEM
DIFFUSERS_MEM STEPS [Q8_0_JSON Q8_0_MEM] (the *_MEM files: one nvidia-smi 'memory.used' MiB
reading per line; the Q8_0 pair is fluxd's run with the transformer in GGUF Q8_0)."""

import json
import sys

GOAL_S = 4.0  # issue J: 28 steps at 1024² in bf16 on an H100


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def peak_mib(path):
    try:
        with open(path) as f:
            vals = [float(x) for x in f.read().split() if x.replace(".", "", 1).isdigit()]
        return max(vals) if vals else None
    except OSError:
        return None


def fmt(v, scale=1.0, unit=""):
    return "-" if v is None else f"{v * scale:,.1f}{unit}"


def step(run):
    return run.get("step_ms_median")


def run_total(run, steps):
    return run.get("step_ms_median") and run["step_ms_median"] * steps / 1e3


def seconds(run, key):
    return run.get(key) and run[key] / 1e3


def main():
    f, d = load(sys.argv[1]), load(sys.argv[2])
    fm, dm = peak_mib(sys.argv[3]), peak_mib(sys.argv[4])
    steps = int(sys.argv[5])
    q = load(sys.argv[6]) if len(sys.argv) > 6 else {}
    qm = peak_mib(sys.argv[7]) if len(sys.argv) > 7 else None
    rows = [
        ("step, median (ms)", step(f), step(d), step(q)),
        (f"{steps} steps = steps x median (s)", run_total(f, steps), run_total(d, steps), run_total(q, steps)),
        ("text encoding (ms)", f.get("text_encoding_ms_median"), d.get("text_encoding_ms_median"),
         q.get("text_encoding_ms_median")),
        ("VAE decode (ms)", f.get("decode_ms_median"), None, q.get("decode_ms_median")),
        ("end to end (s)", seconds(f, "end_to_end_ms_median"), seconds(d, "end_to_end_ms_median"),
         seconds(q, "end_to_end_ms_median")),
        ("load (s)", seconds(f, "load_ms"), seconds(d, "load_ms"), seconds(q, "load_ms")),
        ("peak GPU memory, nvidia-smi (GiB)", fm and fm / 1024, dm and dm / 1024, qm and qm / 1024),
        ("peak torch allocated (GiB)", None, d.get("peak_gpu_bytes") and d["peak_gpu_bytes"] / 2**30,
         None),
    ]
    print(f"{'':36} {'fluxd':>12} {'diffusers':>12} {'fluxd/diffusers':>16} {'fluxd Q8_0':>12}")
    for name, a, b, c in rows:
        ratio = f"{a / b:.2f}" if a and b else "-"
        print(f"{name:36} {fmt(a):>12} {fmt(b):>12} {ratio:>16} {fmt(c):>12}")
    if steps != 28:
        print(f"(dry run at {steps} steps: the goal is for 28 steps at 1024² on an H100)")
    elif f.get("step_ms_median"):
        total = f["step_ms_median"] * steps / 1e3
        verdict = "met" if total <= GOAL_S else "not met"
        print(f"goal: {steps} steps <= {GOAL_S} s: {verdict} ({total:.2f} s)")
    else:
        print("fluxd gave no timing: see its log above")


if __name__ == "__main__":
    main()
