"""Reference outputs of transformers' DepthAnythingForDepthEstimation (with its DPT image
processor, PIL backend) and of BFL's DepthImageEncoder on the tiny Depth Anything written by
`fluxd model init-tiny-depth`, for tests/depth_reference.rs.

Usage: python depth_fixtures.py MODEL_DIR OUT_DIR

Checks that transformers loads the tiny model with no missing, unexpected or mismatched keys,
then writes to OUT_DIR:
- `<case>.png`: the input images, drawn here (odd sizes, up- and downscaled, square and not);
- `<case>.safetensors`: the processor's `pixel_values`, the backbone's embeddings, its feature
  maps (`backbone.<i>`), the neck's reassembled maps after `neck.convs` (`reassembled.<i>`), the
  fusion stage's outputs (`fused.<i>`), `predicted_depth`, and BFL's encoder output
  (`bfl_control`, 1 x 3 x H x W) and its raw prediction (`bfl_depth`);
- `cases.json`: the cases, the resized sizes, and the sha256 of every file of the model folder.
BFL's encoder (flux `modules/image_embedders.py` DepthImageEncoder) is run as written there:
the image as a [-1, 1] float tensor, `((img + 1) * 127.5).byte()`, `processor(img_byte)`, the
model, `repeat(depth, "b h w -> b 3 h w")`, `F.interpolate(..., hw, mode="bicubic",
antialias=True)`, `/ 127.5 - 1`. Run on CPU in float32 with the versions pinned in
requirements.txt.
"""

import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoImageProcessor, AutoProcessor, DepthAnythingForDepthEstimation

from model_hashes import model_hashes

torch.set_grad_enabled(False)


def draw_inputs(out_dir):
    """name -> PIL RGB image, each also saved as <name>.png."""
    images = {}
    # Taller than wide, downscaled: the height's scale is kept, positions interpolated.
    y, x = np.mgrid[0:90, 0:40].astype(np.int64)
    images["tall"] = np.stack([(x * 6) % 256, (y * 2 + x) % 256, (90 + x * y) % 256], -1)
    # A smooth colour field, wider than tall.
    y, x = np.mgrid[0:80, 0:96].astype(np.float64)
    images["field"] = np.stack([
        128 + 100 * np.sin(x / 9.0), 128 + 100 * np.cos(y / 7.0), 128 + 90 * np.sin((x + y) / 13.0)
    ], -1)
    # Square at the model's own size: the stored position table is used as is.
    y, x = np.mgrid[0:56, 0:56].astype(np.int64)
    images["square"] = np.stack([(x * 4) % 256, (y * 4) % 256, ((x + y) * 9) % 256], -1)
    # Small and odd: upscaled, dark levels (the BFL round trip changes levels below 64).
    rng = np.random.default_rng(3)
    images["small"] = rng.integers(0, 80, (13, 21, 3))
    out = {}
    for name, arr in images.items():
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
        img.save(os.path.join(out_dir, f"{name}.png"))
        out[name] = img
    return out


def stages(model, pixel_values):
    """Every stage of DepthAnythingForDepthEstimation.forward, computed by its own modules."""
    t = {}
    t["embeddings"] = model.backbone.embeddings(pixel_values)
    feats = model.backbone(pixel_values).feature_maps
    for i, f in enumerate(feats):
        t[f"backbone.{i}"] = f
    _, _, h, w = pixel_values.shape
    ph, pw = h // model.config.patch_size, w // model.config.patch_size
    maps = model.neck.reassemble_stage(list(feats), ph, pw)
    maps = [conv(m) for conv, m in zip(model.neck.convs, maps)]
    for i, m in enumerate(maps):
        t[f"reassembled.{i}"] = m
    fused = model.neck.fusion_stage(maps)
    for i, f in enumerate(fused):
        t[f"fused.{i}"] = f
    depth = model(pixel_values).predicted_depth
    assert torch.equal(depth, model.head(fused, ph, pw))
    t["predicted_depth"] = depth
    return t


def bfl_encoder(model, processor, pil):
    """BFL's DepthImageEncoder.__call__ on the image as its pipeline hands it over."""
    img = torch.from_numpy(np.array(pil)).float() / 127.5 - 1.0
    img = img.permute(2, 0, 1).unsqueeze(0)  # rearrange "h w c -> 1 c h w"
    hw = img.shape[-2:]
    img = torch.clamp(img, -1.0, 1.0)
    img_byte = ((img + 1.0) * 127.5).byte()
    pixel_values = processor(img_byte, return_tensors="pt")["pixel_values"]
    depth = model(pixel_values).predicted_depth
    raw = depth
    depth = depth.unsqueeze(1).repeat(1, 3, 1, 1)  # repeat "b h w -> b 3 h w"
    depth = F.interpolate(depth, hw, mode="bicubic", antialias=True)
    return raw, depth / 127.5 - 1.0, pixel_values, img_byte


def main():
    model_dir, out_dir = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    model, info = DepthAnythingForDepthEstimation.from_pretrained(model_dir, output_loading_info=True)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info.get(key), f"{key}: {info[key]}"
    model.eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    bfl_processor = AutoProcessor.from_pretrained(model_dir)
    assert type(processor).__name__ == "DPTImageProcessorPil", type(processor).__name__
    assert type(bfl_processor) is type(processor)
    cases = []
    for name, pil in draw_inputs(out_dir).items():
        pixel_values = processor(images=pil, return_tensors="pt")["pixel_values"]
        t = stages(model, pixel_values)
        t["pixel_values"] = pixel_values
        raw, control, bfl_pixels, img_byte = bfl_encoder(model, bfl_processor, pil)
        # The uint8 tensor path gives the same pixels as a PIL image of the same levels.
        same = processor(images=Image.fromarray(img_byte[0].permute(1, 2, 0).numpy()), return_tensors="pt")
        assert torch.equal(same["pixel_values"], bfl_pixels)
        t["bfl_depth"] = raw
        t["bfl_control"] = control
        save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(out_dir, f"{name}.safetensors"))
        cases.append({
            "name": name,
            "image": f"{name}.png",
            "width": pil.width,
            "height": pil.height,
            "resized": list(pixel_values.shape[-2:]),
            "levels": len(model.config.neck_hidden_sizes),
            "depth_range": [float(t["predicted_depth"].min()), float(t["predicted_depth"].max())],
        })
    meta = {
        "seed": int(os.environ.get("FLUXD_TINY_SEED", "7")),
        "model_files": model_hashes(model_dir),
        "cases": cases,
    }
    with open(os.path.join(out_dir, "cases.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"{len(cases)} cases -> {out_dir}")


if __name__ == "__main__":
    main()
