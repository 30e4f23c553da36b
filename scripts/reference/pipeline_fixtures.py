"""Reference outputs of diffusers' FluxPipeline on a tiny model written by `fluxd model init-tiny`.

Usage: python pipeline_fixtures.py MODEL_DIR OUT_DIR

For each case it writes OUT_DIR/<case>.safetensors (initial packed latents, T5 and CLIP
embeddings, the token ids, sigmas and timesteps, the first transformer forward, the final latents
and the decoded image before 8-bit conversion) and OUT_DIR/<case>.png (the 8-bit image exactly as
FluxPipeline's PIL output has it), plus OUT_DIR/cases.json describing the cases and the sha256 of
every file of the model folder, so that the Rust tests can tell when fixtures are stale.
Run on CPU in float32 with the versions pinned in requirements.txt. Then, in bfloat16 (what GPUs
run): each case's first transformer forward on its f32 fixture's inputs, OUT_DIR/<case>_bf16.safetensors
(`bf16_first_forwards`), and the first case's 8-bit image, OUT_DIR/<case>_bf16.png.
"""

import json
import os
import sys

import numpy as np
import torch
from diffusers import FluxPipeline
from PIL import Image
from safetensors.torch import load_file, save_file

from model_hashes import model_hashes

LONG_PROMPT = (
    "an intricately detailed oil painting of a lighthouse on a rocky coast at dusk, waves crashing "
    "against the cliffs, seagulls circling overhead, warm lantern light spilling from the windows, "
    "storm clouds gathering on the horizon, a small fishing boat returning to the harbour, "
    "reflections shimmering on wet stones, moss and lichen on the old walls, dramatic lighting"
)

CASES = [
    # name, width, height, steps, guidance, seed, prompt, max_sequence_length
    ("fox", 128, 96, 4, 3.5, 42, "a red fox in the snow", 512),
    ("square", 128, 128, 1, 1.5, 2**32 + 7, "A Photo of a CAT!!  ", 64),
    ("tall", 96, 160, 8, 5.0, 0, LONG_PROMPT, 32),
    ("wide", 160, 96, 2, 2.5, 123456789012, "", 128),
]


def bf16_first_forwards(bf16, out_dir):
    """Every case's first transformer forward again in bfloat16 (what GPUs run), on the inputs of
    the case's f32 fixture rounded to bf16 as the pipeline's `.to(dtype)` would, for fluxd's GPU
    code path (its tests run it on the CPU in bf16): `<name>_bf16.safetensors`."""
    for name, width, height, steps, guidance, seed, prompt, msl in CASES:
        f32 = load_file(os.path.join(out_dir, f"{name}.safetensors"))
        text_ids = torch.zeros(f32["prompt_embeds"].shape[1], 3)
        image_ids = bf16._prepare_latent_image_ids(1, height // 16, width // 16, "cpu", torch.float32)

        def bf(key):
            return f32[key].to(torch.bfloat16)

        with torch.no_grad():
            first = bf16.transformer(
                hidden_states=bf("initial_latents"),
                timestep=(f32["timesteps"][:1] / 1000).to(torch.bfloat16),
                guidance=torch.full([1], guidance, dtype=torch.float32)
                if bf16.transformer.config.guidance_embeds else None,
                pooled_projections=bf("pooled_prompt_embeds"),
                encoder_hidden_states=bf("prompt_embeds"),
                txt_ids=text_ids, img_ids=image_ids, return_dict=False,
            )[0]
        save_file({"first_velocity": first.contiguous()}, os.path.join(out_dir, f"{name}_bf16.safetensors"))


def main():
    model_dir, out_dir = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    pipe = FluxPipeline.from_pretrained(model_dir, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    cases = []
    for name, width, height, steps, guidance, seed, prompt, msl in CASES:
        tensors = {}
        with torch.no_grad():
            prompt_embeds, pooled, text_ids = pipe.encode_prompt(
                prompt=prompt, prompt_2=None, max_sequence_length=msl
            )
            clip_ids = pipe.tokenizer(
                prompt, padding="max_length", max_length=pipe.tokenizer_max_length,
                truncation=True, return_tensors="pt",
            ).input_ids
            t5_ids = pipe.tokenizer_2(
                prompt, padding="max_length", max_length=msl, truncation=True, return_tensors="pt"
            ).input_ids
            gen = torch.Generator("cpu").manual_seed(seed)
            latents, image_ids = pipe.prepare_latents(
                1, pipe.transformer.config.in_channels // 4, height, width,
                torch.float32, torch.device("cpu"), gen,
            )
            captured = {}

            def on_step_end(_pipe, i, t, kwargs):
                captured["latents"] = kwargs["latents"].clone()
                return kwargs

            out = pipe(
                prompt=prompt, width=width, height=height, num_inference_steps=steps,
                guidance_scale=guidance, generator=torch.Generator("cpu").manual_seed(seed),
                max_sequence_length=msl, output_type="np", callback_on_step_end=on_step_end,
            ).images
            sigmas = pipe.scheduler.sigmas.clone()
            timesteps = pipe.scheduler.timesteps.clone()
            guidance_t = torch.full([1], guidance, dtype=torch.float32)
            first = pipe.transformer(
                hidden_states=latents, timestep=(timesteps[:1] / 1000).to(torch.float32),
                guidance=guidance_t if pipe.transformer.config.guidance_embeds else None,
                pooled_projections=pooled, encoder_hidden_states=prompt_embeds,
                txt_ids=text_ids, img_ids=image_ids, return_dict=False,
            )[0]
        tensors["clip_ids"] = clip_ids.to(torch.int64).contiguous()
        tensors["t5_ids"] = t5_ids.to(torch.int64).contiguous()
        tensors["prompt_embeds"] = prompt_embeds.contiguous()
        tensors["pooled_prompt_embeds"] = pooled.contiguous()
        tensors["initial_latents"] = latents.contiguous()
        tensors["sigmas"] = sigmas.to(torch.float32).contiguous()
        tensors["timesteps"] = timesteps.to(torch.float32).contiguous()
        tensors["first_velocity"] = first.contiguous()
        tensors["final_latents"] = captured["latents"].contiguous()
        image = out[0]
        tensors["image_float"] = torch.from_numpy(np.ascontiguousarray(image)).to(torch.float32)
        save_file(tensors, os.path.join(out_dir, f"{name}.safetensors"))
        # numpy_to_pil: (images * 255).round().astype("uint8")
        Image.fromarray((image * 255).round().astype("uint8")).save(os.path.join(out_dir, f"{name}.png"))
        cases.append({
            "name": name, "width": width, "height": height, "steps": steps,
            "guidance": guidance, "seed": seed, "prompt": prompt, "max_sequence_length": msl,
        })
    bf16 = FluxPipeline.from_pretrained(model_dir, torch_dtype=torch.bfloat16)
    bf16.set_progress_bar_config(disable=True)
    bf16_first_forwards(bf16, out_dir)
    # One case's whole generation in bfloat16: only the 8-bit image is kept.
    name, width, height, steps, guidance, seed, prompt, msl = CASES[0]
    with torch.no_grad():
        image = bf16(
            prompt=prompt, width=width, height=height, num_inference_steps=steps,
            guidance_scale=guidance, generator=torch.Generator("cpu").manual_seed(seed),
            max_sequence_length=msl, output_type="np",
        ).images[0]
    Image.fromarray((image * 255).round().astype("uint8")).save(os.path.join(out_dir, f"{name}_bf16.png"))
    meta = {
        "generator": "scripts/reference/pipeline_fixtures.py",
        "versions": {
            "torch": torch.__version__,
            "diffusers": __import__("diffusers").__version__,
            "transformers": __import__("transformers").__version__,
        },
        "model_seed": int(os.environ.get("FLUXD_TINY_SEED", "7")),
        "model_files": model_hashes(model_dir),
        "cases": cases,
    }
    with open(os.path.join(out_dir, "cases.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
