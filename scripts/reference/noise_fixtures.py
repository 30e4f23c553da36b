"""Reference fixtures for fluxd-engine's `noise`, `schedule` and `postprocess` modules.

Run with the reference venv (torch 2.15.0 CPU, diffusers 0.42.1, numpy 2.x):

    /work/venvs/ref/bin/python scripts/reference/noise_fixtures.py \
        crates/fluxd-engine/tests/fixtures/noise

Writes three small JSON files. Floats are stored as their IEEE-754 bit patterns (integers) so the
Rust tests compare bits, not parsed decimals. Whole arrays are summarised by `fnv1a32w`: FNV-1a
(64-bit) over the float32 bit patterns taken as u32 words, in memory order.

* noise.json: `torch.randn(n, generator=torch.Generator("cpu").manual_seed(seed))` for many
  (seed, n), a sequence of calls on one generator, and FluxPipeline.prepare_latents outputs.
* schedule.json: FluxPipeline's sigmas/timesteps (FlowMatchEulerDiscreteScheduler through
  `retrieve_timesteps`), the transformer's `timestep / 1000` per dtype, and `scheduler.step`.
* postprocess.json: `VaeImageProcessor.postprocess(output_type="pil")` on crafted values,
  including every value whose `v * 255` lands exactly on a .5 boundary.
"""

import json
import os
import sys
import types

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK64 = (1 << 64) - 1


def fnv1a32w(arr):
    """FNV-1a 64 over the u32 bit patterns of a float32 array (one step per word)."""
    h = FNV_OFFSET
    for w in np.ascontiguousarray(arr, dtype=np.float32).reshape(-1).view(np.uint32).tolist():
        h = ((h ^ w) * FNV_PRIME) & MASK64
    return f"{h:016x}"


def f32_bits(values):
    return np.asarray(values, dtype=np.float32).reshape(-1).view(np.uint32).tolist()


def bf16_bits(t):
    return t.to(torch.bfloat16).view(torch.int16).to(torch.int32).bitwise_and(0xFFFF).tolist()


def noise_fixture():
    seeds = [0, 1, 42, 1234, 2**31 - 1, 2**32 - 1, 2**32 + 7, 2**63 - 1]
    sizes = [1, 5, 15, 16, 17, 24, 31, 4096, 4099, 262144]
    cases = []
    for seed in seeds:
        for n in sizes:
            g = torch.Generator("cpu").manual_seed(seed)
            x = torch.randn(n, generator=g, dtype=torch.float32).numpy()
            cases.append(
                {
                    "seed": str(seed),
                    "n": n,
                    "head": f32_bits(x[:8]),
                    "tail": f32_bits(x[-8:]),
                    "hash": fnv1a32w(x),
                }
            )
    # One generator, several calls: exercises the cached double sample (small calls) and that the
    # fill path leaves it alone, then a re-seed that must clear it.
    g = torch.Generator("cpu").manual_seed(42)
    sequence = []
    for n in [3, 20, 1, 7, 33, 2, 16, 1]:
        x = torch.randn(n, generator=g, dtype=torch.float32).numpy()
        sequence.append({"n": n, "values": f32_bits(x)})
    g.manual_seed(5)
    x = torch.randn(3, generator=g, dtype=torch.float32).numpy()
    sequence.append({"reseed": 5, "n": 3, "values": f32_bits(x)})

    # FluxPipeline.prepare_latents itself, on a stand-in `self` (it only reads vae_scale_factor
    # and the two static helpers).
    pipe = types.SimpleNamespace(
        vae_scale_factor=8,
        _pack_latents=FluxPipeline._pack_latents,
        _prepare_latent_image_ids=FluxPipeline._prepare_latent_image_ids,
    )
    latents = []
    for seed, batch, height, width in [(0, 1, 256, 192), (42, 2, 128, 160), (2**32 + 7, 1, 200, 120)]:
        g = torch.Generator("cpu").manual_seed(seed)
        lat, ids = FluxPipeline.prepare_latents(pipe, batch, 16, height, width, torch.float32, "cpu", g)
        g = torch.Generator("cpu").manual_seed(seed)
        lat_bf16, _ = FluxPipeline.prepare_latents(pipe, batch, 16, height, width, torch.bfloat16, "cpu", g)
        assert torch.equal(lat_bf16, lat.to(torch.bfloat16)), "bf16 randn is not randn(f32).to(bf16)"
        unpacked = FluxPipeline._unpack_latents(lat, height, width, 8)
        latents.append(
            {
                "seed": str(seed),
                "batch": batch,
                "height": height,
                "width": width,
                "shape": list(lat.shape),
                "hash": fnv1a32w(lat.numpy()),
                "head": f32_bits(lat.numpy().reshape(-1)[:8]),
                "unpacked_shape": list(unpacked.shape),
                "unpacked_hash": fnv1a32w(unpacked.contiguous().numpy()),
                "ids_shape": list(ids.shape),
                "ids_hash": fnv1a32w(ids.numpy()),
            }
        )
    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cases": cases,
        "sequence": sequence,
        "flux_latents": latents,
    }


FLUX_DEV_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "_diffusers_version": "0.30.0.dev0",
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}
FLUX_SCHNELL_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "_diffusers_version": "0.29.0.dev0",
    "num_train_timesteps": 1000,
    "shift": 1.0,
}
# Not a shipped config: exercises the static shift and the linear time shift.
OTHER_SCHEDULERS = {
    "static_shift_3": {"num_train_timesteps": 1000, "shift": 3.0},
    "linear_dynamic": dict(FLUX_DEV_SCHEDULER, time_shift_type="linear"),
}


def pipeline_schedule(config, steps, image_seq_len):
    """What FluxPipeline.__call__ (step 5, "Prepare timesteps") leaves in the scheduler."""
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
    sigmas = np.linspace(1.0, 1 / steps, steps)
    mu = calculate_shift(
        image_seq_len,
        scheduler.config.get("base_image_seq_len", 256),
        scheduler.config.get("max_image_seq_len", 4096),
        scheduler.config.get("base_shift", 0.5),
        scheduler.config.get("max_shift", 1.15),
    )
    timesteps, _ = retrieve_timesteps(scheduler, steps, "cpu", sigmas=sigmas, mu=mu)
    return scheduler, timesteps


def schedule_fixture():
    configs = {"flux_dev": FLUX_DEV_SCHEDULER, "flux_schnell": FLUX_SCHNELL_SCHEDULER, **OTHER_SCHEDULERS}
    cases = []
    for name, config in configs.items():
        step_list = list(range(1, 9)) + [28, 50] if name == "flux_dev" else [1, 4, 28]
        for steps in step_list:
            for seq in [256, 192, 1024, 4096] if name == "flux_dev" else [192, 4096]:
                scheduler, timesteps = pipeline_schedule(config, steps, seq)
                assert scheduler.sigmas.dtype == torch.float32 and timesteps.dtype == torch.float32
                model_t = {}
                for label, dtype in [("f32", torch.float32), ("bf16", torch.bfloat16), ("f16", torch.float16)]:
                    # pipeline_flux.py: `timestep = t.expand(B).to(latents.dtype)`, then `timestep / 1000`.
                    ts = timesteps.to(dtype) / 1000
                    model_t[label] = f32_bits(ts.float().numpy())
                cases.append(
                    {
                        "config": name,
                        "steps": steps,
                        "image_seq_len": seq,
                        "sigmas": f32_bits(scheduler.sigmas.numpy()),
                        "timesteps": f32_bits(timesteps.numpy()),
                        "model_timesteps": model_t,
                    }
                )

    # scheduler.step on small tensors, f32 and bf16 (sample and model output in the same dtype, as
    # in the pipeline), for a few step indices of a 28-step schedule.
    gen = torch.Generator("cpu").manual_seed(3)
    sample = torch.randn(1, 4, 16, generator=gen) * 1.5
    velocity = torch.randn(1, 4, 16, generator=gen)
    steps = []
    for label, dtype in [("f32", torch.float32), ("bf16", torch.bfloat16)]:
        for index in [0, 13, 27]:
            scheduler, timesteps = pipeline_schedule(FLUX_DEV_SCHEDULER, 28, 4096)
            scheduler.set_begin_index(0)
            s, v = sample.to(dtype), velocity.to(dtype)
            for i in range(index):
                # Advance the scheduler's step index to `index`.
                scheduler.step(v, timesteps[i], s, return_dict=False)
            out = scheduler.step(v, timesteps[index], s, return_dict=False)[0]
            assert out.dtype == dtype
            steps.append(
                {
                    "dtype": label,
                    "index": index,
                    "sigma": f32_bits([scheduler.sigmas[index].item()])[0],
                    "sigma_next": f32_bits([scheduler.sigmas[index + 1].item()])[0],
                    "shape": list(sample.shape),
                    "sample": f32_bits(s.float().numpy()),
                    "velocity": f32_bits(v.float().numpy()),
                    "out": f32_bits(out.float().numpy()),
                }
            )
    return {"configs": configs, "cases": cases, "steps": steps}


def postprocess_fixture():
    processor = VaeImageProcessor(vae_scale_factor=16)
    rng = np.random.default_rng(7)
    # Every float32 x in a dense grid whose `(x * 0.5 + 0.5) * 255` is exactly k + 0.5.
    grid = np.linspace(-1.0, 1.0, 2_000_001, dtype=np.float32)
    v = (grid * np.float32(0.5) + np.float32(0.5)) * np.float32(255)
    halves = grid[(v - np.floor(v)) == np.float32(0.5)]
    values = np.concatenate(
        [
            halves[:: max(1, len(halves) // 96)][:96],
            rng.uniform(-1.2, 1.2, 140).astype(np.float32),
            np.array([-1.0, 1.0, 0.0, -2.0, 3.0, 1e-8, -1e-8], dtype=np.float32),
        ]
    )
    n = 3 * 8 * 10
    values = np.resize(values, n).astype(np.float32)
    out = {"shape": [1, 3, 8, 10], "halves_found": int(len(halves))}
    for label, dtype in [("f32", torch.float32), ("bf16", torch.bfloat16)]:
        x = torch.from_numpy(values.reshape(1, 3, 8, 10)).to(dtype)
        img = processor.postprocess(x, output_type="pil")[0]
        out[label] = {
            "input": f32_bits(x.float().numpy()),
            "rgb": np.asarray(img).reshape(-1).tolist(),
        }
    return out


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "crates/fluxd-engine/tests/fixtures/noise"
    os.makedirs(out_dir, exist_ok=True)
    for name, build in [
        ("noise.json", noise_fixture),
        ("schedule.json", schedule_fixture),
        ("postprocess.json", postprocess_fixture),
    ]:
        data = build()
        with open(os.path.join(out_dir, name), "w") as f:
            json.dump(data, f, separators=(",", ":"))
            f.write("\n")
        print(name, os.path.getsize(os.path.join(out_dir, name)), "bytes")


if __name__ == "__main__":
    main()
