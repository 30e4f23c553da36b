"""diffusers side of the transformer CPU benchmark.

Times FluxTransformer2DModel forwards in f32 on the same random weights as
`cargo run --release -p fluxd-engine --example bench_transformer -- medium 1024 128`
(seed 0 of our writer), with torch.set_num_threads(THREADS).

    /work/venvs/ref/bin/python scripts/reference/transformer_bench.py [preset] [img] [txt] [iters] [threads]
"""

import os
import subprocess
import sys
import tempfile
import time

import torch
from diffusers import FluxTransformer2DModel

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    preset = sys.argv[1] if len(sys.argv) > 1 else "medium"
    img_tokens, txt_tokens, iters, threads = (
        int(a) for a in (sys.argv[2:6] + ["1024", "128", "5", "2"][len(sys.argv[2:6]):])
    )
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "transformer")
        subprocess.run(
            ["cargo", "run", "-q", "-p", "fluxd-engine", "--example", "write_tiny_transformer",
             "--", folder, preset, "0", "1"],
            cwd=ROOT, check=True,
        )
        model = FluxTransformer2DModel.from_pretrained(folder, torch_dtype=torch.float32).eval()
    cfg = model.config
    cols = int(-(-img_tokens ** 0.5 // 1))
    idx = torch.arange(img_tokens)
    img_ids = torch.stack([torch.zeros(img_tokens), (idx // cols).float(), (idx % cols).float()], -1)
    txt_ids = torch.zeros(txt_tokens, 3)
    g = torch.Generator().manual_seed(0)
    img = torch.randn(1, img_tokens, cfg.in_channels, generator=g)
    txt = torch.randn(1, txt_tokens, cfg.joint_attention_dim, generator=g)
    pooled = torch.randn(1, cfg.pooled_projection_dim, generator=g)
    kwargs = dict(
        hidden_states=img, encoder_hidden_states=txt, pooled_projections=pooled,
        timestep=torch.tensor([0.7]), img_ids=img_ids, txt_ids=txt_ids,
        guidance=torch.tensor([3.5]) if cfg.guidance_embeds else None, return_dict=False,
    )
    times = []
    with torch.no_grad():
        model(**kwargs)
        cpu0 = time.process_time()
        for _ in range(iters):
            start = time.perf_counter()
            model(**kwargs)
            times.append(time.perf_counter() - start)
        cpu = (time.process_time() - cpu0) / iters
    times.sort()
    print(f"diffusers forward ({img_tokens} img + {txt_tokens} txt tokens, {threads} threads): "
          f"median {times[len(times) // 2] * 1e3:.1f} ms, all "
          f"[{', '.join(f'{t * 1e3:.1f}' for t in times)}] ms, min {times[0] * 1e3:.1f} ms, "
          f"process CPU time {cpu * 1e3:.0f} ms per forward")


if __name__ == "__main__":
    main()
