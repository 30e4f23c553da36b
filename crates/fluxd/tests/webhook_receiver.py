"""A webhook receiver for fluxd's crash test, verifying each delivery independently of fluxd.

Usage: webhook_receiver.py RECORD_FILE [--no-secret-header] [--any-final]

Listens on 127.0.0.1 (or $RECEIVER_HOST; a free port, printed as `listening PORT` on the first
stdout line) and
accepts POST /hook/<n>. The secret of hook n follows the test's rule: `s3cret-<n>` for odd n,
`whsec_` + base64(`wh-key-<n>`) for even n. Each delivery is checked three times:
- `X-Webhook-Secret` against the secret, as the official SDK's `verify_webhook` does it (the
  header present, equal as UTF-8 bytes, compared in constant time); with `--no-secret-header`
  the header must be absent instead (`fluxd serve --webhook-no-secret-header`);
- `X-BFL-Signature: sha256=<hex HMAC-SHA256(secret bytes, body)>`, with Python's hmac;
- the Standard Webhooks headers, with the `standardwebhooks` package from PyPI.
The payload must be `Ready` with a sample URL; with `--any-final`, any final status does (an
`Error` must say why in `details`).
The first delivery to every n divisible by 5 is answered 503, so the sender must retry.
Every delivery is appended to RECORD_FILE as one JSON line: n, task_id, status, webhook_id, ok,
error.
"""

import base64
import hashlib
import hmac
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook

RECORD = open(sys.argv[1], "a", buffering=1)
SECRET_HEADER = "--no-secret-header" not in sys.argv[2:]
ANY_FINAL = "--any-final" in sys.argv[2:]
LOCK = threading.Lock()
SEEN = set()


def secret_for(n: int) -> str:
    if n % 2:
        return f"s3cret-{n}"
    return "whsec_" + base64.b64encode(f"wh-key-{n}".encode()).decode()


def verify_webhook(secret: str, received) -> bool:
    """The official SDK's check (bfl `verify_webhook`): present and equal, in constant time."""
    if not received:
        return False
    return hmac.compare_digest(secret.encode("utf-8"), received.encode("utf-8"))


def check(n: int, body: bytes, headers) -> dict:
    secret = secret_for(n)
    received = headers.get("X-Webhook-Secret")
    if SECRET_HEADER and not verify_webhook(secret, received):
        raise ValueError(f"bad X-Webhook-Secret {received!r}")
    if not SECRET_HEADER and received is not None:
        raise ValueError("X-Webhook-Secret sent although turned off")
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    got = headers.get("X-BFL-Signature", "")
    if not hmac.compare_digest(expected, got):
        raise ValueError(f"bad X-BFL-Signature {got!r}")
    verifier = Webhook(secret) if secret.startswith("whsec_") else Webhook(secret.encode())
    payload = verifier.verify(body, dict(headers.items()))
    if payload["task_id"] != payload["id"]:
        raise ValueError("task_id and id differ")
    if payload["status"] == "Ready":
        if not payload["result"]["sample"].startswith("http"):
            raise ValueError(f"unexpected payload {payload!r}")
    elif not ANY_FINAL:
        raise ValueError(f"not Ready: {payload!r}")
    elif payload["status"] == "Error" and not payload["details"]["error"]:
        raise ValueError(f"an Error without details: {payload!r}")
    elif payload["status"] == "Pending":
        raise ValueError(f"a webhook before the end: {payload!r}")
    return payload


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        parts = self.path.strip("/").split("/")
        record = {"path": self.path, "webhook_id": self.headers.get("webhook-id")}
        status = 200
        try:
            if len(parts) != 2 or parts[0] != "hook":
                raise ValueError("unknown path")
            n = int(parts[1])
            record["n"] = n
            payload = check(n, body, self.headers)
            record["task_id"] = payload["task_id"]
            record["status"] = payload["status"]
            record["ok"] = True
            with LOCK:
                first = n not in SEEN
                SEEN.add(n)
            if first and n % 5 == 0:
                status = 503
        except Exception as exc:  # noqa: BLE001 - every failure is recorded and answered 400
            record["ok"] = False
            record["error"] = repr(exc)
            status = 400
        record["answered"] = status
        with LOCK:
            RECORD.write(json.dumps(record) + "\n")
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer((os.environ.get("RECEIVER_HOST", "127.0.0.1"), 0), Handler)
print(f"listening {server.server_address[1]}", flush=True)
server.serve_forever()
