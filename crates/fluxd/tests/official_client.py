"""The official BFL Python client (`blackforest` from PyPI, unmodified) against a running fluxd.

Usage: python official_client.py BASE_URL API_KEY OUT_DIR

For every endpoint the client knows that fluxd serves (`flux-dev`, `flux-pro`, `flux-pro-1.1`,
`flux-pro-1.1-ultra`) and the two fine-tune endpoints, which the client has no input model for and
which a user of the client registers as below, this runs the library's own code: the `X-Key` header,
`POST {base}/v1/{model}`, polling the returned `polling_url` until `Ready`. The sample URL is then
downloaded without a key into OUT_DIR. One line per endpoint is printed:
`RESULT {"model": ..., "id": ..., "content_type": ..., "file": ...}`; the Rust test checks the images.
"""

import json
import os
import sys
from typing import Optional

import requests
from blackforest import BFLClient
from blackforest.types.general.client_config import ClientConfig
from pydantic import BaseModel


class FluxProFinetunedInputs(BaseModel):
    finetune_id: str
    finetune_strength: float = 1.1
    steps: int = 40
    guidance: float = 2.5
    prompt: str = ""
    image_prompt: Optional[str] = None
    width: int = 1024
    height: int = 768
    prompt_upsampling: bool = False
    seed: Optional[int] = None
    safety_tolerance: int = 2
    output_format: str = "jpeg"
    webhook_url: Optional[str] = None
    webhook_secret: Optional[str] = None


class FluxUltraFinetunedInputs(BaseModel):
    finetune_id: str
    finetune_strength: float = 1.2
    prompt: Optional[str] = ""
    seed: Optional[int] = None
    aspect_ratio: str = "16:9"
    safety_tolerance: int = 2
    output_format: Optional[str] = "jpeg"
    image_prompt: Optional[str] = None
    image_prompt_strength: float = 0.1
    prompt_upsampling: bool = False


# Small settings where the schema has them; the server fixes the rest (see the endpoint table).
RUNS = [
    ("flux-dev", {"prompt": "a photo of a fox", "width": 256, "height": 256, "steps": 2, "seed": 42}),
    ("flux-pro", {"prompt": "a photo of a fox", "width": 256, "height": 320, "steps": 2, "seed": 42,
                  "interval": 3.0}),
    ("flux-pro-1.1", {"prompt": "a photo of a fox", "width": 320, "height": 256, "seed": 42,
                      "output_format": "png"}),
    ("flux-pro-1.1-ultra", {"prompt": "a photo of a fox", "aspect_ratio": "16:9", "seed": 42}),
    ("flux-pro-finetuned", {"finetune_id": "my-finetune", "prompt": "a photo of TOK", "width": 256,
                            "height": 256, "steps": 2, "seed": 42}),
    ("flux-pro-1.1-ultra-finetuned", {"finetune_id": "my-finetune", "prompt": "a photo of TOK",
                                      "aspect_ratio": "1:1", "seed": 42}),
]


def main():
    base, key, out = sys.argv[1:4]
    client = BFLClient(api_key=key, base_url=base)
    client.model_input_registry = dict(client.model_input_registry)
    client.model_input_registry["flux-pro-finetuned"] = FluxProFinetunedInputs
    client.model_input_registry["flux-pro-1.1-ultra-finetuned"] = FluxUltraFinetunedInputs
    for model, inputs in RUNS:
        submitted = client.generate(model, inputs, ClientConfig(sync=False))
        assert submitted.polling_url.startswith(base + "/v1/get_result?id="), submitted.polling_url
        result = client.get_polling_result(
            submitted.id, ClientConfig(sync=True, timeout=120, polling_interval=0.2)
        )
        assert result["seed"] == 42, (model, result)
        image = requests.get(result["sample"], timeout=30)
        image.raise_for_status()
        path = os.path.join(out, f"{model}.img")
        with open(path, "wb") as f:
            f.write(image.content)
        line = {"model": model, "id": submitted.id, "file": path,
                "content_type": image.headers["content-type"]}
        print("RESULT " + json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
