"""The older official client (`black-forest-labs` from PyPI, unmodified) against a running fluxd.

Usage: python legacy_client.py BASE_URL API_KEY OUT_DIR

Its `generate(model, **params)` posts to `{base}/v1/{model}` for the three models it knows
(`flux-dev`, `flux-pro`, `flux-pro-1.1`) and answers a `Task`; `get_result(task)` polls
`/v1/get_result?id=` and validates `result.sample` as an HTTP URL. Each image is downloaded without a
key into OUT_DIR; one `RESULT {...}` line per model is printed for the Rust test.
"""

import json
import os
import sys
import time

import httpx


def main():
    base, key, out = sys.argv[1:4]
    # The package builds a default client from BFL_API_KEY when imported.
    os.environ["BFL_API_KEY"] = key
    from black_forest_labs import Client, Status

    client = Client(api_key=key, base_url=base)
    runs = [
        ("flux-dev", {"prompt": "a red fox", "width": 256, "height": 256, "steps": 2, "seed": 7}),
        ("flux-pro", {"prompt": "a red fox", "width": 256, "height": 256, "steps": 2, "seed": 7,
                      "interval": 2}),
        ("flux-pro-1.1", {"prompt": "a red fox", "width": 256, "height": 256, "seed": 7}),
    ]
    for model, params in runs:
        task = client.generate(model, **params)
        deadline = time.time() + 120
        while not task.is_done:
            assert time.time() < deadline, f"{model}: task never finished"
            time.sleep(0.2)
            task = client.get_result(task)
        assert task.status == Status.READY, (model, task)
        image = httpx.get(task.result.sample, timeout=30)
        image.raise_for_status()
        path = os.path.join(out, f"legacy-{model}.img")
        with open(path, "wb") as f:
            f.write(image.content)
        line = {"model": model, "id": task.id, "file": path,
                "content_type": image.headers["content-type"], "prompt": task.result.prompt}
        print("RESULT " + json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
