"""Times diffusers' FluxPipeline on a model folder, as `fluxd bench` times fluxd: one warm-up
generation, then `runs` timed ones; per-step times (the GPU synchronised at each step's end),
text encoding, VAE decode, end to end, and the peak GPU memory torch allocated. Prints JSON.

Usage: diffusers_bench.py MODEL WIDTH HEIGHT STEPS MAX_SEQUENCE_LENGTH [--device cuda] [--runs 1]
"""

import argparse
import json
import statistics
import time

import torch
from diffusers import FluxPipeline

PROMPT = "a benchmark prompt about a red fox in the snow"  # the one `fluxd bench` uses


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("width", type=int)
    ap.add_argument("height", type=int)
    ap.add_argument("steps", type=int)
    ap.add_argument("msl", type=int)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f32"])
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    dev = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    t0 = time.perf_counter()
    pipe = FluxPipeline.from_pretrained(args.model, torch_dtype=dtype).to(dev)
    sync(dev)
    load_ms = (time.perf_counter() - t0) * 1e3
    pipe.set_progress_bar_config(disable=True)

    marks = []

    def on_step(_pipe, _i, _t, kwargs):
        sync(dev)
        marks.append(time.perf_counter())
        return kwargs

    def generate():
        gen = torch.Generator("cpu").manual_seed(0)
        return pipe(
            PROMPT, height=args.height, width=args.width, num_inference_steps=args.steps,
            guidance_scale=3.5, max_sequence_length=args.msl, generator=gen,
            callback_on_step_end=on_step, output_type="pil",
        )

    # Text encoding and decode, timed on their own the way the pipeline calls them.
    def encode():
        sync(dev)
        t = time.perf_counter()
        pipe.encode_prompt(PROMPT, None, max_sequence_length=args.msl, device=dev)
        sync(dev)
        return (time.perf_counter() - t) * 1e3

    generate()  # warm-up
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    steps, e2e, enc = [], [], []
    for _ in range(args.runs):
        marks.clear()
        sync(dev)
        start = time.perf_counter()
        generate()
        sync(dev)
        end = time.perf_counter()
        e2e.append((end - start) * 1e3)
        # The first mark ends step 1; text encoding and latent setup come before it.
        steps.extend((b - a) * 1e3 for a, b in zip(marks, marks[1:]))
        enc.append(encode())
    report = {
        "load_ms": load_ms,
        "step_ms_median": statistics.median(steps) if steps else None,
        "step_ms": steps,
        "text_encoding_ms_median": statistics.median(enc),
        "end_to_end_ms_median": statistics.median(e2e),
        "peak_gpu_bytes": torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None,
        "torch": torch.__version__,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
