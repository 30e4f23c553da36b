"""The sha256 of every file of a model folder, which the fixture scripts record in their
`cases.json` so that the Rust reference tests can tell when fixtures are stale."""

import hashlib
import os


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_hashes(model_dir):
    """{path relative to model_dir: sha256 hex}, sorted by path."""
    out = {}
    for root, _, files in os.walk(model_dir):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, model_dir)] = sha256(path)
    return dict(sorted(out.items()))
