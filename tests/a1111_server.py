"""A local server (127.0.0.1 only) that speaks the AUTOMATIC1111 web UI API, and the
OpenAI-compatible images API, in front of a memscan model, with faults injected on request: what
the HTTP model kind is tested against."""

from __future__ import annotations

import base64
import contextlib
import json
import queue
import ssl
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from scanner.features import png_bytes, to_uint8


class QuietServer(ThreadingHTTPServer):
    block_on_close = False  # a handler still sleeping out an injected slow answer is not waited for
    def handle_error(self, request, client_address):  # a client that timed out and left: expected here
        pass


class A1111Server:
    """``faults``: consumed in order by txt2img requests, one each (then every request is served):
    ``("slow", seconds)``, ``("429", retry_after)``, ``("500",)``, ``("truncated",)``,
    ``("wrong_size",)``, ``("html",)``, ``("401",)``, ``("switch_model",)`` (from then on the
    server reports another checkpoint)."""

    def __init__(self, model, faults=(), model_name: str = "demo-sd-tiny.safetensors [abc123]", key: str | None = None,
                 tls: tuple[str, str] | None = None):
        self.model, self.faults, self.model_name, self.key = model, deque(faults), model_name, key
        self.requests: Counter = Counter()
        self.generated: list[tuple[str, int]] = []
        self.few_step_requests = 0
        self.draws = 1000  # the seeds an unseeded (OpenAI-compatible) request gets, in arrival order
        self.lock = threading.Lock()
        self.sampling = threading.Lock()  # a diffusers pipeline is not thread-safe: one image at a time
        self.server = QuietServer(("127.0.0.1", 0), self._handler())
        if tls:  # (certificate file, key file): HTTPS
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.server.server_address[1]}"

    def _next_fault(self):
        with self.lock:
            return self.faults.popleft() if self.faults else None

    def _handler(self):
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: bytes, content_type: str = "application/json", headers=()):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def _authorized(self) -> bool:
                if owner.key and self.headers.get("Authorization") != f"Bearer {owner.key}":
                    self._send(401, b'{"detail": "Unauthorized"}')
                    return False
                return True

            def do_GET(self):
                owner.requests["GET " + self.path] += 1
                if not self._authorized():
                    return
                if self.path == "/sdapi/v1/options":
                    self._send(200, json.dumps({"sd_model_checkpoint": owner.model_name}).encode())
                elif self.path == "/test/generated":  # not A1111's: what a test asks of a server in another process
                    with owner.lock:
                        self._send(200, json.dumps(owner.generated).encode())
                elif self.path == "/v1/models":  # the OpenAI-compatible face
                    self._send(200, json.dumps({"object": "list", "data": [{"id": "demo-sd-tiny"}]}).encode())
                else:
                    self._send(404, b'{"detail": "Not Found"}')

            def do_POST(self):
                owner.requests["POST " + self.path] += 1
                if not self._authorized():
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fault = owner._next_fault()
                kind = fault[0] if fault else None
                if kind == "slow":
                    # the client has timed out and left by now; sampling anyway would run the shared model on this
                    # stale thread while the next test (not waiting for it: block_on_close) samples it too
                    time.sleep(fault[1])
                    return self._send(503, b'{"detail": "too slow"}')
                elif kind == "429":
                    return self._send(429, b'{"detail": "busy"}', headers=[("Retry-After", str(fault[1]))])
                elif kind == "500":
                    return self._send(500, b'{"detail": "CUDA out of memory"}')
                elif kind == "html":
                    return self._send(200, b"<html><body>Bad gateway</body></html>", "text/html")
                elif kind == "401":
                    return self._send(401, b'{"detail": "Unauthorized"}')
                elif kind == "switch_model":
                    owner.model_name = "another-model.safetensors [def456]"
                if self.path == "/v1/images/generations":  # unseeded: the server draws its own seed
                    size, seed, steps, guidance = int(body["size"].split("x")[0]), owner.draws, 20, 5.0
                    owner.draws += 1
                else:
                    size, seed, steps, guidance = int(body["width"]), int(body["seed"]), int(body["steps"]), float(body["cfg_scale"])
                few_step = body.get("sampler_name") == "DPM++ 2M"  # the demo model's few-step solver is DPM-Solver++ 2M
                if few_step:
                    owner.few_step_requests += 1
                with owner.sampling:
                    image = owner.model.generate([body["prompt"]], [seed], num_inference_steps=steps, guidance_scale=guidance,
                                                 few_step=few_step)[0]
                pixels = to_uint8(image)
                if kind == "wrong_size":
                    pixels = np.ascontiguousarray(pixels[: size // 2, : size // 2])
                data = png_bytes(pixels)
                if kind == "truncated":
                    data = data[: len(data) // 2]
                with owner.lock:
                    owner.generated.append((body["prompt"], seed))
                if self.path == "/v1/images/generations":
                    return self._send(200, json.dumps({"created": 0, "data": [{"b64_json": base64.b64encode(data).decode()}]}).encode())
                info = {"seed": seed, "sd_model_name": owner.model_name.split(" [")[0]}
                self._send(200, json.dumps({"images": [base64.b64encode(data).decode()], "parameters": body,
                                            "info": json.dumps(info)}).encode())

        return Handler

    @contextlib.contextmanager
    def running(self):
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()


class FixedImage:
    """A "model" that answers at once: what a client's own cost is measured against."""

    def generate(self, prompts, seeds, num_inference_steps, guidance_scale, few_step=False):
        return np.full((len(prompts), 32, 32, 3), 0.5, np.float32)


class MainThreadSampler:
    """Samples on the thread that calls ``serve``: torch on CPU runs several times slower on other
    threads of a process whose main thread has used it (measured here: 1.4 s against 0.3 s an image)."""

    def __init__(self, model):
        self.model, self.jobs = model, queue.Queue()

    def generate(self, prompts, seeds, num_inference_steps, guidance_scale, few_step=False):
        done = queue.Queue(maxsize=1)
        self.jobs.put((prompts, seeds, num_inference_steps, guidance_scale, few_step, done))
        return done.get()

    def serve(self):
        while True:
            prompts, seeds, steps, guidance, few_step, done = self.jobs.get()
            done.put(self.model.generate(prompts, seeds, num_inference_steps=steps, guidance_scale=guidance, few_step=few_step))


if __name__ == "__main__":  # a server in its own process (scripts/bench_http.py): prints its URL, serves until killed
    import sys

    if "--fixed" in sys.argv:
        sampler = MainThreadSampler(FixedImage())
    else:
        from scanner.demo import SD_MODEL
        from scanner.models.registry import load_model

        sampler = MainThreadSampler(load_model(SD_MODEL))
    server = A1111Server(sampler)
    threading.Thread(target=server.server.serve_forever, daemon=True).start()
    print(server.url, flush=True)
    sampler.serve()
