"""diffusers side of `scripts/bench.sh`: per-step time of FluxPipeline (CPU, float32) on the same
model folder and settings as `fluxd bench`, with and without the same LoRA file.

Usage: python pipeline_bench.py MODEL_DIR WIDTH HEIGHT STEPS MAX_SEQ_LEN RUNS THREADS [LORA_FILE]
Prints one JSON object.
"""

import json
import os
import resource
import sys
import time

import torch
from diffusers import FluxPipeline


def step_times(pipe, kwargs, runs, extra=None):
    stamps = []

    def on_step_end(_pipe, i, t, cb_kwargs):
        stamps.append(time.perf_counter())
        return cb_kwargs

    def one():
        stamps.clear()
        stamps.append(time.perf_counter())
        pipe(**kwargs, callback_on_step_end=on_step_end, output_type="latent",
             **(extra or {}))
        # The first stamp is taken before text encoding: drop that interval.
        return [1e3 * (b - a) for a, b in zip(stamps[1:], stamps[2:])]

    one()  # warm-up
    out = []
    for _ in range(runs):
        out.extend(one())
    return out


def median(v):
    v = sorted(v)
    return v[len(v) // 2]


def main():
    model_dir = sys.argv[1]
    width, height, steps, msl, runs, threads = (int(a) for a in sys.argv[2:8])
    lora = sys.argv[8] if len(sys.argv) > 8 else None
    torch.set_num_threads(threads)
    pipe = FluxPipeline.from_pretrained(model_dir, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt="a benchmark prompt about a red fox in the snow", width=width,
                  height=height, num_inference_steps=steps + 1, guidance_scale=3.5,
                  max_sequence_length=msl, generator=torch.Generator("cpu").manual_seed(0))
    with torch.no_grad():
        base = step_times(pipe, kwargs, runs)
        report = {"torch": torch.__version__, "threads": threads, "step_ms_median": median(base),
                  "step_ms": base}
        if lora:
            pipe.load_lora_weights(lora, adapter_name="bench")
            with_lora = step_times(pipe, kwargs, runs, {"joint_attention_kwargs": {"scale": 1.0}})
            report["lora"] = {"step_ms_median": median(with_lora), "step_ms": with_lora,
                              "step_overhead_ratio": median(with_lora) / median(base)}
    report["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
