"""Reference outputs of diffusers' FluxPriorReduxPipeline (FLUX.1 Redux image prompts) on the tiny
model written by `fluxd model init-tiny` (base model in MODEL_DIR, Redux model in MODEL_DIR/redux).

Usage: python redux_fixtures.py MODEL_DIR OUT_DIR

Writes to OUT_DIR:
- the image prompts themselves (`<case>.png` / `.jpg`, drawn here) and, for each, Pillow's decode
  after transformers' convert_to_rgb (`<case>_rgb.png`) and its 8-bit bicubic resize to the SigLIP
  input (`<case>_resized.png`);
- `<case>.safetensors`: SigLIP last_hidden_state, the Redux tokens, the prior pipeline's
  prompt_embeds / pooled_prompt_embeds, and FluxPipeline's final latents when generating from them;
  `<case>_out.png`: that generation's 8-bit image;
- `resize_<w>x<h>.png`: Pillow's resize of synthetic images the Rust test draws with the same
  formula (`pattern` below), to check the resize on more shapes;
- `cases.json`: the cases and the sha256 of every file of the model folder.
Run on CPU in float32 with the versions pinned in requirements.txt.
"""

import json
import os
import sys

import numpy as np
import torch
from diffusers import FluxPipeline, FluxPriorReduxPipeline
from PIL import Image
from safetensors.torch import save_file
from transformers.image_transforms import convert_to_rgb

from model_hashes import model_hashes

# name, file, prompt, width, height, steps, guidance, seed, max_sequence_length
CASES = [
    ("gradient", "gradient.png", "a red fox", 64, 48, 2, 3.5, 42, 32),
    ("photo", "photo.jpg", "", 48, 64, 2, 2.5, 7, 16),
]
RESIZE_SHAPES = [(200, 150), (17, 300), (62, 62), (61, 63), (5, 4)]


def pattern(w, h):
    """A deterministic RGB test pattern, drawn identically by tests/redux_reference.rs."""
    y, x = np.mgrid[0:h, 0:w].astype(np.int64)
    chans = [(x * 7 + y * 13 + c * 50 + ((x * y) % 11) * 9) % 256 for c in range(3)]
    return Image.fromarray(np.stack(chans, -1).astype(np.uint8), "RGB")


def draw_inputs(out_dir):
    # An RGBA gradient with an alpha ramp: exercises compositing onto white and an upscale.
    w, h = 50, 37
    y, x = np.mgrid[0:h, 0:w]
    rgba = np.stack([x * 5, y * 6, 255 - x * 4, 40 + (x + y) * 2], -1).clip(0, 255).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(os.path.join(out_dir, "gradient.png"))
    # A smooth colour field as a JPEG (4:2:0 chroma): exercises JPEG decoding and a downscale.
    w, h = 96, 80
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    rgb = np.stack([
        128 + 100 * np.sin(x / 9.0), 128 + 100 * np.cos(y / 7.0), 128 + 90 * np.sin((x + y) / 13.0)
    ], -1).astype(np.uint8)
    Image.fromarray(rgb, "RGB").save(os.path.join(out_dir, "photo.jpg"), quality=90)


def main():
    model_dir, out_dir = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    draw_inputs(out_dir)
    base = FluxPipeline.from_pretrained(model_dir, torch_dtype=torch.float32)
    base.set_progress_bar_config(disable=True)
    prior = FluxPriorReduxPipeline.from_pretrained(
        os.path.join(model_dir, "redux"), torch_dtype=torch.float32,
        text_encoder=base.text_encoder, tokenizer=base.tokenizer,
        text_encoder_2=base.text_encoder_2, tokenizer_2=base.tokenizer_2,
    )
    # FLUX.1-Redux was released with transformers 4's (slow, Pillow) SiglipImageProcessor; with
    # torchvision installed transformers 5 would pick its torch backend, which resizes otherwise.
    if not type(prior.feature_extractor).__name__.endswith("Pil"):
        raise SystemExit(f"expected the Pillow image processor, got {type(prior.feature_extractor)}")
    size = prior.feature_extractor.size
    side = (size["width"], size["height"])
    cases = []
    for name, file, prompt, width, height, steps, guidance, seed, msl in CASES:
        image = Image.open(os.path.join(out_dir, file))
        image.load()
        rgb = Image.fromarray(convert_to_rgb(image, return_numpy=True))
        rgb.save(os.path.join(out_dir, f"{name}_rgb.png"))
        rgb.resize(side, resample=Image.BICUBIC).save(os.path.join(out_dir, f"{name}_resized.png"))
        with torch.no_grad():
            hidden = prior.encode_image(image, torch.device("cpu"), 1)
            tokens = prior.image_embedder(hidden).image_embeds
            # The prompt is encoded with the base pipeline at a short T5 length (the prior
            # pipeline's own encode_prompt fixes 512) and handed to the prior as embeddings.
            text, pooled, _ = base.encode_prompt(prompt=prompt, prompt_2=None, max_sequence_length=msl)
            out = prior(image=image, prompt_embeds=text, pooled_prompt_embeds=pooled)
            captured = {}

            def on_step_end(_pipe, i, t, kwargs):
                captured["latents"] = kwargs["latents"].clone()
                return kwargs

            img = base(
                prompt_embeds=out.prompt_embeds, pooled_prompt_embeds=out.pooled_prompt_embeds,
                width=width, height=height, num_inference_steps=steps, guidance_scale=guidance,
                generator=torch.Generator("cpu").manual_seed(seed), output_type="np",
                callback_on_step_end=on_step_end,
            ).images[0]
        save_file({
            "last_hidden_state": hidden.contiguous(),
            "image_embeds": tokens.contiguous(),
            "prompt_embeds": out.prompt_embeds.contiguous(),
            "pooled_prompt_embeds": out.pooled_prompt_embeds.contiguous(),
            "final_latents": captured["latents"].contiguous(),
        }, os.path.join(out_dir, f"{name}.safetensors"))
        Image.fromarray((img * 255).round().astype("uint8")).save(os.path.join(out_dir, f"{name}_out.png"))
        cases.append({
            "name": name, "file": file, "prompt": prompt, "width": width, "height": height,
            "steps": steps, "guidance": guidance, "seed": seed, "max_sequence_length": msl,
        })
    for w, h in RESIZE_SHAPES:
        pattern(w, h).resize(side, resample=Image.BICUBIC).save(os.path.join(out_dir, f"resize_{w}x{h}.png"))
    meta = {
        "generator": "scripts/reference/redux_fixtures.py",
        "versions": {
            "torch": torch.__version__,
            "diffusers": __import__("diffusers").__version__,
            "transformers": __import__("transformers").__version__,
            "pillow": Image.__version__,
        },
        "model_seed": int(os.environ.get("FLUXD_TINY_SEED", "7")),
        "model_files": model_hashes(model_dir),
        "siglip_size": list(side),
        "resize_shapes": [list(s) for s in RESIZE_SHAPES],
        "cases": cases,
    }
    with open(os.path.join(out_dir, "cases.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
