"""The official BFL Python client (`blackforest` from PyPI, unmodified) against a running fluxd.

Usage: python official_client.py BASE_URL API_KEY OUT_FILE

The client only knows the models in its registry, so, as a user of the client would, we register an
input model for `flux-pro-finetuned` (the seed endpoint's fields) on the client instance. Everything
else is the library's own code: the `X-Key` header, `POST {base}/v1/flux-pro-finetuned`, polling the
returned `polling_url` until `Ready`. The sample URL is then downloaded without a key.
"""

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


def main():
    base, key, out = sys.argv[1:4]
    client = BFLClient(api_key=key, base_url=base)
    client.model_input_registry = dict(client.model_input_registry)
    client.model_input_registry["flux-pro-finetuned"] = FluxProFinetunedInputs
    submitted = client.generate(
        "flux-pro-finetuned",
        {"finetune_id": "my-finetune", "prompt": "a photo of TOK", "width": 256, "height": 256,
         "steps": 2, "seed": 42},
        ClientConfig(sync=False),
    )
    assert submitted.polling_url.startswith(base + "/v1/get_result?id="), submitted.polling_url
    result = client.get_polling_result(
        submitted.id, ClientConfig(sync=True, timeout=120, polling_interval=0.2)
    )
    assert result["seed"] == 42, result
    image = requests.get(result["sample"], timeout=30)
    image.raise_for_status()
    assert image.headers["content-type"] == "image/jpeg", image.headers
    with open(out, "wb") as f:
        f.write(image.content)
    print(submitted.id)


if __name__ == "__main__":
    main()
