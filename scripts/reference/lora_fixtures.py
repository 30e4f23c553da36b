"""Reference images of diffusers' FluxPipeline with LoRA files written by fluxd's random-adapter
writer (the same adapter stored in the PEFT/diffusers and kohya layouts).

Usage: python lora_fixtures.py MODEL_DIR LORA_DIR OUT_DIR

For each layout and each scale (0, 1.0, 1.7) it loads the file with `load_lora_weights` and
generates with `joint_attention_kwargs={"scale": s}` (the LoRA strength), writing
OUT_DIR/<layout>_<scale>.png and the final packed latents to OUT_DIR/<layout>_<scale>.safetensors,
plus OUT_DIR/lora_cases.json with the sha256 of each LoRA file.
"""

import hashlib
import json
import os
import sys

import torch
from diffusers import FluxPipeline
from PIL import Image
from safetensors.torch import save_file

CASE = dict(prompt="a watercolor fox", width=96, height=64, steps=3, guidance=3.5, seed=5, msl=32)
SCALES = [0.0, 1.0, 1.7]
LAYOUTS = ["peft", "kohya"]


def main():
    model_dir, lora_dir, out_dir = sys.argv[1:4]
    os.makedirs(out_dir, exist_ok=True)
    pipe = FluxPipeline.from_pretrained(model_dir, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    hashes = {}
    for layout in LAYOUTS:
        path = os.path.join(lora_dir, f"{layout}.safetensors")
        hashes[layout] = hashlib.sha256(open(path, "rb").read()).hexdigest()
        pipe.load_lora_weights(path, adapter_name=layout)
        for scale in SCALES:
            captured = {}

            def on_step_end(_pipe, i, t, kwargs):
                captured["latents"] = kwargs["latents"].clone()
                return kwargs

            image = pipe(
                prompt=CASE["prompt"], width=CASE["width"], height=CASE["height"],
                num_inference_steps=CASE["steps"], guidance_scale=CASE["guidance"],
                generator=torch.Generator("cpu").manual_seed(CASE["seed"]),
                max_sequence_length=CASE["msl"], output_type="np",
                joint_attention_kwargs={"scale": scale}, callback_on_step_end=on_step_end,
            ).images[0]
            name = f"{layout}_{scale}"
            Image.fromarray((image * 255).round().astype("uint8")).save(os.path.join(out_dir, f"{name}.png"))
            save_file({"final_latents": captured["latents"].contiguous()},
                      os.path.join(out_dir, f"{name}.safetensors"))
        pipe.unload_lora_weights()
    with open(os.path.join(out_dir, "lora_cases.json"), "w") as f:
        json.dump({"case": CASE, "scales": SCALES, "layouts": LAYOUTS, "lora_files": hashes}, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
