"""A minimal ONNX classification server for the exported model: stdlib HTTP, numpy and onnxruntime only (no torch),
so the serving image stays small. The input contract (size, mean, std, labels) is read from the ONNX metadata that
harden stamps at export.

    python -m harden.deploy.http model.onnx --port 8080
    POST /predict  {"images": [[[[r, g, b], ...]]]}   uint8 HWC images, normalised here
                   {"inputs": [...]}                  already normalised NCHW float32
    -> {"labels": [...], "classes": [...], "logits": [[...]]}
    GET /health    -> {"status": "ok", "model_sha256": "..."}
"""

from __future__ import annotations

import argparse
import hashlib
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

MAX_BODY = 64 << 20  # refuse bodies above 64 MiB before reading them


class Model:
    def __init__(self, path: Path):
        import onnxruntime as ort

        self.sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        meta = self.sess.get_modelmeta().custom_metadata_map
        self.name = self.sess.get_inputs()[0].name
        self.size = tuple(int(v) for v in meta["harden.input_size"].split(","))
        self.mean = np.array([float(v) for v in meta["harden.mean"].split(",")], np.float32)[:, None, None]
        self.std = np.array([float(v) for v in meta["harden.std"].split(",")], np.float32)[:, None, None]
        self.scale = float(meta.get("harden.pixel_scale", "255"))
        self.labels = meta.get("harden.labels", "").split("\n")
        self.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()

    def predict(self, doc: dict) -> dict:
        if "images" in doc:
            x = np.asarray(doc["images"], np.float32)
            if x.ndim != 4 or x.shape[1:] != (self.size[1], self.size[2], self.size[0]):
                raise ValueError(f"images must be N x {self.size[1]} x {self.size[2]} x {self.size[0]} (HWC), "
                                 f"got {x.shape}")
            x = (x.transpose(0, 3, 1, 2) / self.scale - self.mean) / self.std
        elif "inputs" in doc:
            x = np.asarray(doc["inputs"], np.float32)
            if x.ndim != 4 or x.shape[1:] != self.size:
                raise ValueError(f"inputs must be N x {' x '.join(map(str, self.size))} (NCHW, normalised), "
                                 f"got {x.shape}")
        else:
            raise ValueError('send {"images": ...} (uint8 HWC) or {"inputs": ...} (normalised NCHW)')
        logits = self.sess.run(None, {self.name: x.astype(np.float32)})[0]
        classes = logits.argmax(1)
        return {"classes": classes.tolist(), "labels": [self.labels[c] for c in classes], "logits": logits.tolist()}


def handler(model: Model):
    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, doc: dict) -> None:
            body = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802 (http.server's naming)
            if self.path == "/health":
                self._send(200, {"status": "ok", "model_sha256": model.sha256})
            else:
                self._send(404, {"error": "GET /health or POST /predict"})

        def do_POST(self):  # noqa: N802
            if self.path != "/predict":
                self._send(404, {"error": "POST /predict"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length <= 0 or length > MAX_BODY:
                self._send(413 if length > MAX_BODY else 400, {"error": f"body must be 1..{MAX_BODY} bytes"})
                return
            try:
                self._send(200, model.predict(json.loads(self.rfile.read(length))))
            except (ValueError, TypeError, json.JSONDecodeError) as exc:
                self._send(400, {"error": str(exc)})

        def log_message(self, *args) -> None:  # quiet: one line per request is the proxy's job
            pass

    return Handler


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m harden.deploy.http", description=__doc__.split("\n\n")[0])
    p.add_argument("onnx", type=Path)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    args = p.parse_args(argv)
    if not args.onnx.is_file():
        p.error(f"{args.onnx}: no such file")
    try:
        model = Model(args.onnx)
    except KeyError as exc:
        p.error(f"{args.onnx}: missing harden metadata {exc}; serve an ONNX exported by harden")
    server = ThreadingHTTPServer((args.host, args.port), handler(model))
    print(f"serving {args.onnx} on http://{args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
