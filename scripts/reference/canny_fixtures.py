"""Reference edge maps of OpenCV's `cv2.Canny(img, low, high)` (defaults: apertureSize 3,
L2gradient False) for tests/canny_reference.rs, which checks our port bit for bit.

Usage: python canny_fixtures.py OUT_DIR

Writes to OUT_DIR:
- `<image>.png`: the input images, drawn here (noise, flat areas, thin lines, ramps with tied
  gradients, odd and tiny sizes; 8-bit gray and RGB);
- `<image>_<low>_<high>.png`: cv2.Canny of that image at those thresholds (several pairs, low >
  high and fractional ones included);
- `bfl_<image>.png`: BFL's CannyImageEncoder path (flux `modules/image_embedders.py`): the RGB
  image through the reference's float round trip `x / 127.5 - 1` -> `((v + 1) * 127.5)` cast to
  uint8, then cv2.Canny(50, 200);
- `fuzz.safetensors`: random small images (`case<i>.input`, H x W x C uint8) and their edge maps
  (`case<i>.edges`), thresholds in cases.json;
- `cases.json`: every case, the round trip's 256 levels and the OpenCV version.
Every map is computed with OpenCV's default thread count and again single-threaded (where
OpenCV may take IPP's Canny instead of its own) and the two must agree.
"""

import json
import os
import sys

import cv2
import numpy as np
import torch
from PIL import Image
from safetensors.numpy import save_file

PAIRS = [(50, 200), (100, 200), (200, 50), (10, 30), (0, 0), (20.7, 60.2), (300, 600)]


def canny(img, low, high):
    """cv2.Canny at the default thread count, checked against the single-threaded run."""
    threads = cv2.getNumThreads()
    a = cv2.Canny(img, low, high)
    cv2.setNumThreads(1)
    b = cv2.Canny(img, low, high)
    cv2.setNumThreads(threads)
    assert np.array_equal(a, b), "OpenCV's single- and multi-threaded Canny differ"
    return a


def draw_images():
    rng = np.random.default_rng(20251207)
    images = {}
    images["noise_gray"] = rng.integers(0, 256, (29, 37), dtype=np.uint8)
    images["noise_rgb"] = rng.integers(0, 256, (23, 41, 3), dtype=np.uint8)
    # Smoothed noise: realistic gradients of every direction and strength.
    images["blur_gray"] = cv2.GaussianBlur(rng.integers(0, 256, (64, 48), dtype=np.uint8), (7, 7), 2.0)
    images["blur_rgb"] = cv2.GaussianBlur(rng.integers(0, 256, (45, 67, 3), dtype=np.uint8), (5, 5), 1.2)
    # A flat field with one flat square in it: edges only around the square.
    flat = np.full((21, 19), 90, np.uint8)
    flat[6:13, 5:11] = 160
    images["flat_square"] = flat
    images["flat_rgb"] = np.full((9, 13, 3), (200, 30, 77), np.uint8)
    # One-pixel lines in the four directions and a circle, on an odd-sized canvas.
    lines = np.zeros((53, 47), np.uint8)
    lines[10, 3:40] = 255
    lines[5:48, 30] = 180
    for i in range(35):
        lines[12 + i, 2 + i] = 220
        lines[50 - i, 5 + i] = 140
    cv2.circle(lines, (22, 30), 9, 255, 1)
    images["lines"] = lines
    # Linear ramps: equal magnitudes along rows (ties in the non-maximum suppression).
    y, x = np.mgrid[0:17, 0:31]
    images["ramp"] = ((x * 8 + y * 3) % 256).astype(np.uint8)
    # Colour edges that live in one channel each (the colour path picks the strongest).
    col = np.zeros((24, 24, 3), np.uint8)
    col[:, 12:, 0] = 120
    col[12:, :, 1] = 200
    col[4:20, 4:20, 2] = 60
    images["channels_rgb"] = col
    # Tiny and thin images: borders everywhere.
    images["tiny"] = np.array([[0, 255, 0], [255, 0, 255]], np.uint8)
    images["column"] = (np.arange(9, dtype=np.uint8) * 31)[:, None].copy()
    images["row_rgb"] = rng.integers(0, 256, (1, 11, 3), dtype=np.uint8)
    return images


def bfl_levels():
    """The uint8 levels BFL's CannyImageEncoder gives cv2.Canny for each input level."""
    x = torch.arange(256, dtype=torch.float32)
    v = torch.clamp(x / 127.5 - 1.0, -1.0, 1.0)
    return ((v + 1.0) * 127.5).numpy().astype(np.uint8)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    cases = []
    images = draw_images()
    for name, img in images.items():
        Image.fromarray(img, "L" if img.ndim == 2 else "RGB").save(os.path.join(out, f"{name}.png"))
        for low, high in PAIRS:
            expected = f"{name}_{low}_{high}.png"
            Image.fromarray(canny(img, low, high), "L").save(os.path.join(out, expected))
            cases.append({"input": f"{name}.png", "low": low, "high": high, "expected": expected})

    levels = bfl_levels()
    bfl = []
    for name, img in images.items():
        if img.ndim != 3:
            continue
        # BFL's encoder: (1, 3, H, W) in [-1, 1] from the uint8 image, then back to uint8.
        t = torch.from_numpy(img).float() / 127.5 - 1.0
        t = torch.clamp(t, -1.0, 1.0)
        img_np = ((t + 1.0) * 127.5).numpy().astype(np.uint8)
        assert np.array_equal(img_np, levels[img])
        expected = f"bfl_{name}.png"
        Image.fromarray(canny(img_np, 50, 200), "L").save(os.path.join(out, expected))
        bfl.append({"input": f"{name}.png", "expected": expected})

    rng = np.random.default_rng(7)
    fuzz, tensors = [], {}
    for i in range(40):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        cn = 3 if i % 2 else 1
        img = rng.integers(0, 256, (h, w, cn), dtype=np.uint8)
        if i % 3:
            img = cv2.GaussianBlur(img, (5, 5), 1.0 + (i % 4) * 0.5).reshape(h, w, cn)
        low, high = (float(v) for v in rng.uniform(-10, 400, 2).round(1))
        edges = canny(img[:, :, 0] if cn == 1 else img, low, high)
        tensors[f"case{i}.input"] = np.ascontiguousarray(img)
        tensors[f"case{i}.edges"] = edges
        fuzz.append({"case": i, "low": low, "high": high})
    save_file(tensors, os.path.join(out, "fuzz.safetensors"))

    meta = {
        "opencv": cv2.__version__,
        "cases": cases,
        "bfl": bfl,
        "bfl_levels": levels.tolist(),
        "fuzz": fuzz,
    }
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"{len(cases)} cases, {len(bfl)} BFL cases, {len(fuzz)} fuzz cases -> {out}")


if __name__ == "__main__":
    main()
