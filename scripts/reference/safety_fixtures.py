"""Reference fixtures for fluxd's NSFW image classifier (`fluxd_engine::safety`).

Loads the tiny classifier that `fluxd model init-tiny` writes to `MODEL/safety_checker` with
transformers (AutoModelForImageClassification, checked for missing/unexpected keys) and the
slow PIL image processor (`backend="pil"`, what `use_fast=False` selects), runs a few images
built from an integer formula (Rust rebuilds them, so no image is committed) and stores in
crates/fluxd-engine/tests/fixtures/safety/safety.json:
- Pillow's bilinear resize of each image to the model size (hex bytes), and SHA-256 digests of
  Pillow's bilinear resize to 224x224 (Falconsai's size) for a second, larger check;
- pixel_values, logits and probabilities from the slow processor, and the
  `pipeline("image-classification")` scores;
- what the fast (torchvision) processor would give, for the record (fluxd follows the slow
  one). torchvision is not in the reference venv, so its resize is emulated with the op it
  calls for uint8 tensors, `torch.nn.functional.interpolate(mode="bilinear", antialias=True)`.

Usage: python scripts/reference/safety_fixtures.py MODEL_DIR OUT_DIR
"""

import hashlib
import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

# (width, height, kind, param): kind "pattern" uses `pattern_image`, "red" the tiny model's
# `red_probe` (red channel = param). Sizes: downscale, non-square, upscale, identity, large,
# and two tall ones that Pillow 13 resamples vertically first.
IMAGES = [
    (64, 64, "pattern", 1),
    (100, 60, "pattern", 2),
    (17, 23, "pattern", 3),
    (32, 32, "pattern", 4),
    (512, 384, "pattern", 5),
    (60, 160, "pattern", 6),
    (300, 500, "pattern", 7),
    (48, 40, "red", 255),
    (40, 48, "red", 0),
]


def pattern_image(w, h, k):
    """Smooth ramps plus a high-frequency term, all integer arithmetic (mirrored in Rust)."""
    x = np.arange(w, dtype=np.int64)[None, :]
    y = np.arange(h, dtype=np.int64)[:, None]
    chans = []
    for c in range(3):
        v = (x * (7 + 3 * c + k) + y * (5 + c) + ((x * y) >> 3) * (c + 1) + 31 * k) % 256
        chans.append(v)
    return np.stack(chans, axis=-1).astype(np.uint8)


def red_probe(w, h, red):
    """`fluxd_engine::safety::red_probe`."""
    x = np.arange(w, dtype=np.int64)[None, :]
    y = np.arange(h, dtype=np.int64)[:, None]
    r = np.full((h, w), red, dtype=np.int64)
    g = (x * 37 + y * 11) % 256
    b = (x * 5 + y * 53 + 101) % 256
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def floats(t):
    return [float("%.8g" % v) for v in torch.as_tensor(t).to(torch.float64).flatten().tolist()]


def fast_pixel_values(arr, size):
    """The torchvision backend: uint8 antialiased bilinear resize, then rescale and normalize."""
    t = torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()
    r = torch.nn.functional.interpolate(
        t, size=(size[1], size[0]), mode="bilinear", antialias=True, align_corners=False
    )
    return (r.to(torch.float32) * (1 / 255) - 0.5) / 0.5


def main():
    model_dir, out_dir = sys.argv[1], sys.argv[2]
    clf_dir = os.path.join(model_dir, "safety_checker")
    model, info = AutoModelForImageClassification.from_pretrained(
        clf_dir, output_loading_info=True
    )
    bad = {k: v for k, v in info.items() if v}
    assert not bad, f"loading info: {bad}"
    model.eval()
    slow = AutoImageProcessor.from_pretrained(clf_dir, backend="pil")
    assert "Pil" in type(slow).__name__, type(slow).__name__
    clf = pipeline("image-classification", model=model, image_processor=slow)
    size = (slow.size["width"], slow.size["height"])
    cases = []
    for w, h, kind, param in IMAGES:
        arr = pattern_image(w, h, param) if kind == "pattern" else red_probe(w, h, param)
        img = Image.fromarray(arr, "RGB")
        resized = np.asarray(img.resize(size, Image.Resampling.BILINEAR))
        big = np.asarray(img.resize((224, 224), Image.Resampling.BILINEAR))
        with torch.no_grad():
            pv = slow(images=img, return_tensors="pt")["pixel_values"]
            logits = model(pixel_values=pv).logits[0]
            pv_fast = fast_pixel_values(arr, size)
            logits_fast = model(pixel_values=pv_fast).logits[0]
        # The slow processor's resize is Pillow's: check we store what it used.
        expect = (resized.astype(np.float64) / 255).astype(np.float32)
        expect = (expect - np.float32(0.5)) / np.float32(0.5)
        assert np.array_equal(pv[0].numpy(), expect.transpose(2, 0, 1)), "slow != PIL"
        scores = {d["label"]: d["score"] for d in clf(img)}
        cases.append(
            {
                "width": w,
                "height": h,
                "kind": kind,
                "param": param,
                "resized_hex": resized.tobytes().hex(),
                "resized224_sha256": hashlib.sha256(big.tobytes()).hexdigest(),
                "pixel_values_sum": float(pv.to(torch.float64).sum()),
                "logits": floats(logits),
                "probs": floats(logits.softmax(-1)),
                "pipeline_scores": [float("%.8g" % scores[l]) for l in ("normal", "nsfw")],
                "fast_emulated_logits": floats(logits_fast),
                "fast_emulated_pixel_max_abs_diff": float((pv_fast - pv).abs().max()),
            }
        )
        print(w, h, kind, param, "probs", cases[-1]["probs"], "fast Δpx",
              cases[-1]["fast_emulated_pixel_max_abs_diff"],
              "fast Δlogit", max(abs(a - b) for a, b in zip(cases[-1]["logits"], cases[-1]["fast_emulated_logits"])))
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "safety.json")
    with open(path, "w") as f:
        json.dump({"seed": int(os.environ.get("FLUXD_TINY_SEED", "7")), "cases": cases}, f,
                  separators=(",", ":"))
        f.write("\n")
    print(path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
