"""Reference for fluxd-api's request validation: FastAPI + pydantic v2, the stack the reference API runs.

Regenerate the fixture (from the crate directory):

    python3 -m venv /tmp/pyd && /tmp/pyd/bin/pip install 'pydantic==2.14.4' 'fastapi==0.165.0' 'httpx==0.28.1'
    /tmp/pyd/bin/python tests/pydantic_reference.py > tests/fixtures/pydantic_reference.json

Pinned: Python 3.11, pydantic 2.14.4 (pydantic-core 2.50.5), FastAPI 0.165.0, starlette 1.10.0.
The models mirror the reference's schemas: the seed page (seed-000) for flux-pro-finetuned, and the
reference's published schemas for flux-dev, flux-pro, flux-pro-1.1, flux-pro-1.1-ultra and
flux-pro-1.1-ultra-finetuned (field order, defaults, ranges, `Optional[...] = default` fields).
Choices that are ours are marked OURS. Each case posts a raw body through FastAPI's own request
handling and records the response: the validated model (mode="json") on success, the 422 `detail`
list otherwise. `tests/reference.rs` replays every case against the crate's parsers.
"""

import json
import sys
from enum import Enum
from typing import Optional

import fastapi
import pydantic
import pydantic_core
from fastapi import FastAPI
from fastapi.testclient import TestClient
import re

from pydantic import BaseModel, Field, HttpUrl, field_validator


class OutputFormat(str, Enum):
    jpeg = "jpeg"
    png = "png"


class FinetunedRequest(BaseModel):
    finetune_id: str
    # Constraints written as the reference page prints them ("0 <= x <= 2"): integers where integral,
    # so messages read "less than or equal to 2", not "2.0".
    finetune_strength: float = Field(1.1, ge=0, le=2)
    steps: int = Field(40, ge=1, le=50)
    guidance: float = Field(2.5, ge=1.5, le=5)
    prompt: str = ""
    image_prompt: Optional[str] = None
    width: int = Field(1024, ge=256, le=1440, multiple_of=32)
    height: int = Field(768, ge=256, le=1440, multiple_of=32)
    prompt_upsampling: bool = False
    # OURS: the page says only "integer"; fluxd seeds are u64, so out-of-range seeds are rejected with
    # pydantic's own range errors instead of being silently wrapped.
    seed: Optional[int] = Field(None, ge=0, le=2**64 - 1)
    safety_tolerance: int = Field(2, ge=0, le=6)
    output_format: OutputFormat = OutputFormat.jpeg
    # HttpUrl's JSON schema is exactly the page's "string | null, length 1 - 2083".
    webhook_url: Optional[HttpUrl] = None
    webhook_secret: Optional[str] = None


class DeleteFinetuneRequest(BaseModel):
    finetune_id: str


SEED = Field(None, ge=0, le=2**64 - 1)  # OURS, as for flux-pro-finetuned


class FluxDevRequest(BaseModel):
    prompt: Optional[str] = ""
    image_prompt: Optional[str] = None
    width: int = Field(1024, ge=256, le=1440, multiple_of=32)
    height: int = Field(768, ge=256, le=1440, multiple_of=32)
    steps: Optional[int] = Field(28, ge=1, le=50)
    prompt_upsampling: bool = False
    seed: Optional[int] = SEED
    guidance: Optional[float] = Field(3.0, ge=1.5, le=5)
    safety_tolerance: int = Field(2, ge=0, le=6)
    output_format: Optional[OutputFormat] = OutputFormat.jpeg
    webhook_url: Optional[HttpUrl] = None
    webhook_secret: Optional[str] = None


class FluxProRequest(BaseModel):
    prompt: Optional[str] = ""
    image_prompt: Optional[str] = None
    width: int = Field(1024, ge=256, le=1440, multiple_of=32)
    height: int = Field(768, ge=256, le=1440, multiple_of=32)
    steps: Optional[int] = Field(40, ge=1, le=50)
    prompt_upsampling: bool = False
    seed: Optional[int] = SEED
    guidance: Optional[float] = Field(2.5, ge=1.5, le=5)
    safety_tolerance: int = Field(2, ge=0, le=6)
    interval: Optional[float] = Field(2.0, ge=1, le=4)
    output_format: Optional[OutputFormat] = OutputFormat.jpeg
    webhook_url: Optional[HttpUrl] = None
    webhook_secret: Optional[str] = None


class FluxPro11Request(BaseModel):
    prompt: Optional[str] = ""
    image_prompt: Optional[str] = None
    width: int = Field(1024, ge=256, le=1440, multiple_of=32)
    height: int = Field(768, ge=256, le=1440, multiple_of=32)
    prompt_upsampling: bool = False
    seed: Optional[int] = SEED
    safety_tolerance: int = Field(2, ge=0, le=6)
    output_format: Optional[OutputFormat] = OutputFormat.jpeg
    webhook_url: Optional[HttpUrl] = None
    webhook_secret: Optional[str] = None


def check_aspect_ratio(v: str) -> str:
    """OURS: the reference documents "between 21:9 and 9:21" only."""
    m = re.fullmatch(r"([0-9]{1,4}):([0-9]{1,4})", v)
    if not m or int(m.group(1)) == 0 or int(m.group(2)) == 0:
        raise ValueError("aspect_ratio must be W:H with whole numbers from 1 to 9999, like 16:9")
    w, h = int(m.group(1)), int(m.group(2))
    if 9 * w > 21 * h or 9 * h > 21 * w:
        raise ValueError("aspect_ratio must be between 21:9 and 9:21")
    return v


class UltraRequest(BaseModel):
    prompt: Optional[str] = ""
    prompt_upsampling: bool = False
    seed: Optional[int] = SEED
    aspect_ratio: str = "16:9"
    safety_tolerance: int = Field(2, ge=0, le=6)
    output_format: Optional[OutputFormat] = OutputFormat.jpeg
    raw: bool = False
    image_prompt: Optional[str] = None
    image_prompt_strength: float = Field(0.1, ge=0, le=1)
    webhook_url: Optional[HttpUrl] = None
    webhook_secret: Optional[str] = None

    _aspect = field_validator("aspect_ratio")(classmethod(lambda cls, v: check_aspect_ratio(v)))


class UltraFinetunedRequest(BaseModel):
    finetune_id: str
    finetune_strength: float = Field(1.2, ge=0, le=2)
    prompt: Optional[str] = ""
    seed: Optional[int] = SEED
    aspect_ratio: str = "16:9"
    safety_tolerance: int = Field(2, ge=0, le=6)
    output_format: Optional[OutputFormat] = OutputFormat.jpeg
    image_prompt: Optional[str] = None
    image_prompt_strength: float = Field(0.1, ge=0, le=1)
    prompt_upsampling: bool = False
    webhook_url: Optional[HttpUrl] = None
    webhook_secret: Optional[str] = None

    _aspect = field_validator("aspect_ratio")(classmethod(lambda cls, v: check_aspect_ratio(v)))


app = FastAPI()


@app.post("/v1/flux-pro-finetuned")
def finetuned(req: FinetunedRequest):
    return req.model_dump(mode="json")


@app.post("/v1/delete_finetune")
def delete(req: DeleteFinetuneRequest):
    return req.model_dump(mode="json")


@app.post("/v1/flux-dev")
def flux_dev(req: FluxDevRequest):
    return req.model_dump(mode="json")


@app.post("/v1/flux-pro")
def flux_pro(req: FluxProRequest):
    return req.model_dump(mode="json")


@app.post("/v1/flux-pro-1.1")
def flux_pro_1_1(req: FluxPro11Request):
    return req.model_dump(mode="json")


@app.post("/v1/flux-pro-1.1-ultra")
def ultra(req: UltraRequest):
    return req.model_dump(mode="json")


@app.post("/v1/flux-pro-1.1-ultra-finetuned")
def ultra_finetuned(req: UltraFinetunedRequest):
    return req.model_dump(mode="json")


def j(**fields):
    body = {"finetune_id": "my-finetune"}
    body.update(fields)
    return json.dumps(body)


def field_cases(name, values):
    return [(f"{name}={json.dumps(v)}", j(**{name: v})) for v in values]


FINETUNED = [
    ("minimal", '{"finetune_id":"my-finetune"}'),
    ("page example", json.dumps({
        "finetune_id": "my-finetune", "finetune_strength": 1.1, "steps": 40, "guidance": 2.5,
        "prompt": "ein fantastisches bild", "image_prompt": "aGVsbG8=", "width": 1024, "height": 768,
        "prompt_upsampling": False, "seed": 42, "safety_tolerance": 2, "output_format": "jpeg",
        "webhook_url": "https://example.com/hook", "webhook_secret": "s3cret"})),
    ("unknown fields ignored", j(foo=1, bar={"x": [1, 2]}, model="flux-dev")),
    ("missing finetune_id", '{"steps":40}'),
    ("empty object", "{}"),
    ("several errors at once", json.dumps({
        "steps": 0, "width": 1000, "height": 1472, "guidance": "abc", "output_format": "gif",
        "webhook_url": "not a url", "prompt_upsampling": "maybe", "seed": 1.5})),
    ("all nulls", json.dumps({k: None for k in FinetunedRequest.model_fields})),
    # Top level that is not an object.
    ("array body", "[1,2]"),
    ("string body", '"hello"'),
    ("number body", "42"),
    ("null body", "null"),
    ("true body", "true"),
    ("empty body", ""),
    # Malformed JSON: FastAPI reports Python json's message and character offset.
    ("malformed: truncated", '{"finetune_id": "x"'),
    ("malformed: trailing comma object", '{"finetune_id": "x",}'),
    ("malformed: trailing comma array", '{"finetune_id": "x", "a": [1,]}'),
    ("malformed: single quotes", "{'finetune_id': 'x'}"),
    ("malformed: bare word", "hello"),
    ("malformed: missing colon", '{"finetune_id" "x"}'),
    ("malformed: missing comma", '{"finetune_id": "x" "steps": 3}'),
    ("malformed: extra data", '{"finetune_id": "x"} {}'),
    ("malformed: unterminated string", '{"finetune_id": "x'),
    ("malformed: bad escape", '{"finetune_id": "\\q"}'),
    ("malformed: bad unicode escape", '{"finetune_id": "\\u12"}'),
    ("malformed: control char", '{"finetune_id": "a\tb"}'),
    ("malformed: non-ascii before error", '{"prompt": "ünïcödé €", "finetune_id": x}'),
    ("malformed: whitespace only", "   \n "),
    ("malformed: leading zero", '{"steps": 01}'),
    ("malformed: lone minus", '{"steps": -}'),
    ("malformed: multiline", '{\n  "finetune_id": "x",\n  "steps": 4\n  "width": 512\n}'),
    ("ok: whitespace around", ' \n {"finetune_id" : "x" } \n'),
    ("ok: unicode escapes", '{"finetune_id": "\\u00fc\\ud83d\\ude00", "prompt": "caf\\u00e9"}'),
    ("ok: exponent ints", j(steps=4e1, width=5.12e2, seed=1e3)),
    ("ok: UTF-8 BOM", '\ufeff{"finetune_id": "x"}'),
    ("ok: duplicate keys, last wins", '{"finetune_id": "a", "steps": 3, "finetune_id": "b"}'),
    ("duplicate keys, missing echo", '{"steps": 3, "steps": 4}'),
    ("malformed: open bracket", "["),
    ("malformed: object trailing comma short", '{"a":1,}'),
    ("malformed: colon then end", '{"a" :'),
    ("malformed: NaN-like word", '{"finetune_id": "x", "steps": nul}'),
    ("malformed: fraction without digits", '{"finetune_id": "x", "guidance": 2.}'),
    ("malformed: exponent without digits", '{"finetune_id": "x", "guidance": 2e}'),
    ("malformed: escape at end", '{"finetune_id": "x\\'),
    ("malformed: unicode escape at end", '"\\u0041'),
    ("malformed: second surrogate bad", '{"prompt": "\\ud83d\\uzzzz"}'),
    ("ok: high surrogate then plain escape", '{"finetune_id": "x", "prompt": "\\u00e9\\n"}'),
    ("malformed: deep but fine then error", '{"finetune_id": "x", "a": [[[{"b": [1, 2 3]}]]]}'),
    ("finetune_id types", '{"finetune_id": 5}'),
    ("finetune_id float", '{"finetune_id": 5.5}'),
    ("finetune_id bool", '{"finetune_id": true}'),
    ("finetune_id list", '{"finetune_id": ["a"]}'),
    ("finetune_id object", '{"finetune_id": {"a": 1}}'),
    ("finetune_id empty", '{"finetune_id": ""}'),
    ("finetune_id null", '{"finetune_id": null}'),
]
FINETUNED += field_cases("steps", [0, 1, 50, 51, -1, 40.0, 40.5, "40", " 40 ", "40.0", "4_0", "+40", "abc", "",
                                  True, False, None, [40], {"a": 1}, 1e20, 1.0e300, "1e1", "0x10",
                                  "9999999999999999999999", 2**70, "-0", "0040", "40.00", "40.", "4__0",
                                  "40_", "_40", "+ 40", "\u0661\u0662", "\t40\n", -1e20, 2**63, -2**63 - 1,
                                  1e19, 9.2e18, -0.0])
FINETUNED += field_cases("width", [224, 256, 1440, 1472, 1000, 1441, 0, 255, 2048, 1024.0, "512", 1e3, 33])
FINETUNED += field_cases("height", [224, 256, 1440, 1472, 1000, 768, "768"])
FINETUNED += field_cases("guidance", [1.49, 1.5, 5, 5.0, 5.01, 1, "2.5", " 3 ", "abc", "", True, False, None,
                                     "nan", "inf", "-inf", "NaN", "Infinity", "1e0", "2.", ".5e1", "1_000",
                                     [2.5], "+2.5", "2,5", 10**25, {}, "\u00a02.5", "2.5_0", "_2.5", "1__0",
                                     "-nan", "+inf", "infinity", "1e", 1e-400])
FINETUNED += field_cases("finetune_strength", [-0.01, 0, 0.0, 2, 2.0, 2.01, "1.5", True, None, -1e-300, "x"])
FINETUNED += field_cases("safety_tolerance", [-1, 0, 1, 2, 3, 4, 5, 6, 7, 6.0, "6", 2.5, True, None])
FINETUNED += field_cases("output_format", ["png", "jpeg", "gif", "JPEG", "Png", "", 1, None, ["png"], "jpg"])
FINETUNED += field_cases("webhook_url", [
    "", "x" * 2083, "https://e.com/" + "a" * 2069, "https://e.com/" + "a" * 2070, "not a url", "ftp://x",
    "http://x", "https://example.com/hook?a=1#f", "HTTPS://EXAMPLE.COM/A", "http://", "https://",
    "http://exa mple.com", "http://[::1]:8080/x", "http://127.0.0.1:99999/", "mailto:a@b.c", "//x.com/a",
    "http:example.com", " https://e.com ", "https://ü.com/", 5, True, ["x"], None, "file:///etc/passwd",
    "http://user:pw@host/", "https://e.com:443/", "ws://x", "x" * 2084, "  " + "x" * 2082, "http://a b/",
    "https://exa%20mple.com", "https://a..b/", "http://999.1.1.1/", "http://[::1/", "1http://x", "http:/x",
    "HTTP://x", "http://x:0/", "https://e.com/ä?q=ü", "   ", "http://localhost:8080/hook",
    "https://xn--tda.com/", "http://%41.com/"])
FINETUNED += field_cases("prompt_upsampling", [
    True, False, 0, 1, 2, -1, 0.0, 1.0, 0.5, 2.0, -0.0, 1e0, "OFF", "Yes", "oN", 10**30, "true", "false", "True", "FALSE", "yes", "no", "on", "off",
    "1", "0", "t", "f", "y", "n", "Y", "maybe", "", " true ", "2", None, [True]])
FINETUNED += field_cases("seed", [None, 0, 42, -1, 2**64 - 1, 2**64, "42", 42.0, 42.5, True, "abc", "-5"])
FINETUNED += field_cases("prompt", ["", "a photo", None, 5, 1.5, True, ["a"], {"a": "b"}, "x" * 5000])
FINETUNED += field_cases("image_prompt", ["", "aGVsbG8=", None, 5, True, ["a"]])
FINETUNED += field_cases("webhook_secret", ["", "s", None, 5, False, {}])

DELETE = [
    ("delete ok", '{"finetune_id": "abc"}'),
    ("delete missing", "{}"),
    ("delete wrong type", '{"finetune_id": 3}'),
    ("delete null", '{"finetune_id": null}'),
    ("delete array body", "[]"),
    ("delete malformed", "{"),
    ("delete empty body", ""),
    ("delete unknown fields", '{"finetune_id": "abc", "x": 1}'),
]


def cases_for(model, base, fields):
    """Cases for a newer endpoint: the whole-body cases, then each field's values, each sent on
    top of `base` (the model's required fields)."""

    def body(**extra):
        b = dict(base)
        b.update(extra)
        return json.dumps(b)

    out = [
        ("minimal", body()),
        ("unknown fields ignored", body(foo=1, model="flux-dev", bar={"x": [1, 2]})),
        ("all nulls", json.dumps({k: None for k in model.model_fields})),
        ("empty object", "{}"),
        ("array body", "[1]"),
        ("malformed", '{"prompt": "x",}'),
        ("empty body", ""),
    ]
    for name, values in fields.items():
        out += [(f"{name}={json.dumps(v)}", body(**{name: v})) for v in values]
    return out


COMMON = {
    "prompt": ["", "a fox", None, 5, ["a"]],
    "prompt_upsampling": [True, "yes", 2, None],
    "seed": [None, 0, 42, -1, 2**64, "7", 1.5],
    "safety_tolerance": [0, 6, 7, None, "3"],
    "output_format": ["png", "jpeg", None, "webp", "JPEG", 1],
    "image_prompt": ["aGVsbG8=", None, 3],
    "webhook_url": ["https://example.com/hook", "not a url", "", None, "ftp://x"],
    "webhook_secret": ["s", None, 5],
}
SIDES = {
    "width": [256, 1440, 1000, 224, 1472, None, "512"],
    "height": [768, 255, "768", None],
}
ASPECT = {
    "aspect_ratio": ["16:9", "21:9", "9:21", "1:1", "0007:3", "22:9", "9:22", "3:1", "16:9 ", "16/9",
                     "0:1", "1:0", "10000:1", "", "a:b", ":", "16:", 16, None, "\u0661:\u0661"],
    "image_prompt_strength": [0, 1, 0.5, -0.01, 1.01, None, "0.3", True],
}
FLUX_DEV = cases_for(FluxDevRequest, {}, {
    **COMMON, **SIDES,
    "steps": [1, 50, 0, 51, None, "28", 28.0, 28.5],
    "guidance": [1.5, 5, 1.49, 5.01, None, "3", "nan"],
})
FLUX_DEV.append(("several errors at once", json.dumps(
    {"steps": 0, "width": 1000, "guidance": "x", "output_format": "gif", "seed": -1})))
FLUX_PRO = cases_for(FluxProRequest, {}, {
    **COMMON, **SIDES,
    "steps": [40, None, 0],
    "guidance": [2.5, None, 6],
    "interval": [1, 4, 2.5, 0.99, 4.01, None, "3", True, "x"],
})
FLUX_PRO_1_1 = cases_for(FluxPro11Request, {}, {
    **COMMON, **SIDES,
    "steps": [1, "x"],  # not in the schema: ignored
    "guidance": [9],
})
ULTRA = cases_for(UltraRequest, {}, {
    **COMMON, **ASPECT,
    "raw": [True, False, "true", None, 2],
})
ULTRA.append(("several errors at once", json.dumps(
    {"aspect_ratio": "3:1", "image_prompt_strength": 2, "raw": "x", "seed": "y"})))
ULTRA_FINETUNED = cases_for(UltraFinetunedRequest, {"finetune_id": "my-finetune"}, {
    **COMMON, **ASPECT,
    "finetune_id": ["", 5, None],
    "finetune_strength": [0, 2, 1.2, -0.01, 2.01, None, "1.5"],
    "raw": [True],  # not in this schema: ignored
})


def run(client, path, cases):
    out = []
    for name, body in cases:
        r = client.post(path, content=body.encode("utf-8"), headers={"content-type": "application/json"})
        case = {"name": name, "body": body, "status": r.status_code}
        if r.status_code == 200:
            case["ok"] = r.json()
        else:
            case["detail"] = r.json()["detail"]
        out.append(case)
    return out


def main():
    client = TestClient(app)
    fixture = {
        "versions": {
            "python": sys.version.split()[0],
            "pydantic": pydantic.VERSION,
            "pydantic_core": pydantic_core.__version__,
            "fastapi": fastapi.__version__,
        },
        "finetuned": run(client, "/v1/flux-pro-finetuned", FINETUNED),
        "delete_finetune": run(client, "/v1/delete_finetune", DELETE),
        "flux_dev": run(client, "/v1/flux-dev", FLUX_DEV),
        "flux_pro": run(client, "/v1/flux-pro", FLUX_PRO),
        "flux_pro_1_1": run(client, "/v1/flux-pro-1.1", FLUX_PRO_1_1),
        "ultra": run(client, "/v1/flux-pro-1.1-ultra", ULTRA),
        "ultra_finetuned": run(client, "/v1/flux-pro-1.1-ultra-finetuned", ULTRA_FINETUNED),
    }
    json.dump(fixture, sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
