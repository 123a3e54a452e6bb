"""Text-to-image models reachable only as a service (issue 21): a sampler, nothing more.

``--model http://HOST:PORT --api a1111`` speaks the AUTOMATIC1111 / Forge web UI's
``POST /sdapi/v1/txt2img`` (seeded: the request's seed is the generation's); ``--api openai``
speaks OpenAI-compatible ``POST /v1/images/generations``, which takes no seed: a generation's
identity is then (prompt, draw index), and a draw cannot be reproduced (the report says so).

Built for a real service: a bounded number of requests in flight; retries with exponential
backoff and jitter on 429 (honouring ``Retry-After``), 5xx, timeouts and dropped connections; an
optional rate limit per minute; per-run accounting of requests, retries, failures and seconds. A
response that is not a valid image of the asked size becomes a failed generation (non-finite
pixels, which the generate stage stores as a failed row), never a crash. The key comes from
``MEMSCAN_API_KEY`` (or the file ``[http] api_key_file`` names) and is sent only to the URL given; it never reaches the database, a log or
the report. TLS certificates are verified. A server that changes its model mid-run is refused:
the run would otherwise mix two models under one identity.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import random
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import numpy as np

from scanner.config import HttpConfig
from scanner.errors import MemscanError
from scanner.models.base import SAMPLE, TEXT, FamilyDefaults

API_KEY_VARIABLE = "MEMSCAN_API_KEY"
RETRIED_STATUS = {429, 500, 502, 503, 504}


def is_url(text: object) -> bool:
    return isinstance(text, str) and text.lower().startswith(("http://", "https://"))


class RequestFailed(Exception):
    """A request that failed for good (after its retries): its generation is a failed row."""


class HttpClient:
    """JSON over HTTP with retries, a bound on requests in flight, a rate limit and accounting."""

    def __init__(self, url: str, settings: HttpConfig):
        self.base = url.rstrip("/")
        self.settings = settings
        self.key = read_key(settings.api_key_file) if settings.api_key_file else os.environ.get(API_KEY_VARIABLE)
        self.tls = ssl.create_default_context()  # verified, always
        self.accounting: Counter = Counter()
        self._lock = threading.Lock()
        self._next_start = 0.0

    def _wait_for_rate(self) -> None:
        if not self.settings.requests_per_minute:
            return
        with self._lock:
            start = max(time.monotonic(), self._next_start)
            self._next_start = start + 60.0 / self.settings.requests_per_minute
        time.sleep(max(0.0, start - time.monotonic()))

    def _count(self, **amounts: float) -> None:
        with self._lock:
            self.accounting.update(amounts)

    def call(self, method: str, path: str, body: dict | None = None) -> object:
        """The decoded JSON answer. Retries what a service may recover from; a 401/403 or an
        answer that is not JSON is one line (``MemscanError``); what fails after every retry
        raises ``RequestFailed``."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        last = "no attempt"
        for attempt in range(self.settings.retries + 1):
            self._wait_for_rate()
            began = time.monotonic()
            self._count(requests=1, retries=int(attempt > 0))
            wait = None
            try:
                request = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
                with urllib.request.urlopen(request, timeout=self.settings.timeout_s, context=self.tls) as response:
                    payload = response.read()
                self._count(seconds=time.monotonic() - began)
                try:
                    return json.loads(payload)
                except ValueError:
                    raise MemscanError(f"{self.base}{path}: the answer is not JSON ({payload[:60]!r}...); is this "
                                       f"a {self.settings.api} API?") from None
            except urllib.error.HTTPError as error:
                self._count(seconds=time.monotonic() - began)
                if error.code in (401, 403):
                    raise MemscanError(f"{self.base}: HTTP {error.code} ({error.reason}); set {API_KEY_VARIABLE} to a key "
                                       "this service accepts") from None
                if error.code not in RETRIED_STATUS:
                    raise RequestFailed(f"HTTP {error.code} {error.reason}") from None
                last = f"HTTP {error.code} {error.reason}"
                wait = retry_after(error.headers.get("Retry-After"))
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                self._count(seconds=time.monotonic() - began)
                if isinstance(getattr(error, "reason", None), ssl.SSLCertVerificationError):
                    raise MemscanError(f"{self.base}: its TLS certificate is not trusted ({error.reason.verify_message}); "
                                       "memscan always verifies TLS: add the service's CA to the system's trust store "
                                       "or name it in SSL_CERT_FILE") from None
                if attempt == 0 and not self.accounting.get("answered"):
                    raise MemscanError(f"{self.base}: does not answer ({getattr(error, 'reason', error)})") from None
                last = f"no answer ({getattr(error, 'reason', error)})"
            if attempt < self.settings.retries:
                time.sleep(wait if wait is not None else backoff(attempt, self.settings.backoff_s))
        self._count(failures=1)
        raise RequestFailed(f"{last}, after {self.settings.retries} retries")

    def answered(self) -> None:
        """The service has answered once: from now on a dropped connection is retried, not fatal."""
        self._count(answered=1)


def read_key(path: str) -> str:
    """The key on the first line of ``path`` (``[http] api_key_file``): one line naming the file when it cannot."""
    from scanner.errors import input_error

    try:
        key = Path(path).read_text(encoding="utf-8").splitlines()[0].strip()
    except (OSError, UnicodeDecodeError, IndexError):
        raise input_error(Path(path), "cannot read an API key from its first line") from None
    if not key:
        raise input_error(Path(path), "the first line, where the API key belongs, is empty")
    return key


def retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (the delta form; an HTTP date is treated as absent)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def backoff(attempt: int, base: float) -> float:
    """Exponential backoff with full jitter: many workers retrying at once do not retry in step."""
    return random.uniform(0, min(60.0, base * 2 ** attempt))


def decode_image(encoded: object, size: int) -> np.ndarray:
    """float32 [size, size, 3] in [0, 1] from base64 PNG/JPEG; RequestFailed when it is not one of that size."""
    from PIL import Image

    try:
        raw = base64.b64decode(encoded.split(",", 1)[-1] if isinstance(encoded, str) else b"", validate=False)
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            pixels = np.asarray(image.convert("RGB"), np.float32) / 255.0
    except Exception as error:  # PIL raises many kinds on a truncated or foreign file
        raise RequestFailed(f"not a readable image ({type(error).__name__})") from None
    if pixels.shape[:2] != (size, size):
        raise RequestFailed(f"an image of {pixels.shape[1]}x{pixels.shape[0]}, not the {size}x{size} asked for")
    return pixels


class HttpModel:
    """A model behind an HTTP API: black box only."""

    capabilities = frozenset({SAMPLE, TEXT})
    loras = ()
    scheduler_name = ""
    failure_reasons: dict[int, str] = {}  # replaced by each generate call

    def __init__(self, url: str, settings: HttpConfig):
        parts = urlsplit(url)
        if parts.username or parts.password:
            raise MemscanError(f"--model: put credentials in {API_KEY_VARIABLE}, not in the URL")
        self.url = url.rstrip("/")
        self.settings = settings
        self.client = HttpClient(self.url, settings)
        self.api = APIS[settings.api](self.client, settings)
        self.served_model = self.api.served_model()
        self.client.answered()
        self.kind = f"http-{settings.api}"
        self.model_ref = f"{self.url} ({settings.api} API, model {self.served_model or 'not reported'})"
        self.model_hash = hashlib.sha256(f"{self.url}|{settings.api}|{self.served_model}".encode()).hexdigest()
        self.precision = "remote"  # the service's own, unknown here
        self.resolution = settings.resolution
        self.defaults = self.api.defaults
        self.seeded = self.api.seeded

    def generate(self, prompts: Sequence[str], seeds: Sequence[int], num_inference_steps: int = 20,
                 guidance_scale: float = 7.0, few_step: bool = False) -> np.ndarray:
        """One request per image, ``in_flight`` at a time; a request that fails for good gives a
        NaN image (a failed generation row) and its reason in ``failure_reasons``."""
        if len(prompts) != len(seeds):
            raise ValueError("one seed per prompt")

        reasons: dict[int, str] = {}

        def one(index: int) -> np.ndarray:
            try:
                return self.api.generate(prompts[index], seeds[index], num_inference_steps, guidance_scale, few_step)
            except RequestFailed as failure:
                reasons[index] = f"the API's answer: {failure}"
                return np.full((self.resolution, self.resolution, 3), np.nan, np.float32)

        with ThreadPoolExecutor(max_workers=self.settings.in_flight) as pool:
            images = np.stack(list(pool.map(one, range(len(prompts)))))
        self.failure_reasons = reasons
        return images

    def request_accounting(self) -> dict[str, float]:
        """Requests sent (retries included), retries, requests failed for good, and seconds spent waiting
        on answers, since the model was loaded (this process's; Ray workers count their own)."""
        counts = self.client.accounting
        return {"sent": float(counts["requests"]), "retried": float(counts["retries"]), "failed": float(counts["failures"]),
                "s": float(counts["seconds"])}


class A1111:
    """The AUTOMATIC1111 / Forge web UI API."""

    seeded = True
    defaults = FamilyDefaults(20, 7.0, (), "the AUTOMATIC1111 web UI's defaults (20 steps, CFG 7); not measured here")
    few_step_sampler = "DPM++ 2M"

    def __init__(self, client: HttpClient, settings: HttpConfig):
        self.client, self.settings = client, settings
        self.model: str | None = None

    def served_model(self) -> str:
        options = self.client.call("GET", "/sdapi/v1/options")
        if not isinstance(options, dict) or "sd_model_checkpoint" not in options:
            raise MemscanError(f"{self.client.base}/sdapi/v1/options: not an AUTOMATIC1111 API answer "
                               "(no sd_model_checkpoint)")
        self.model = str(options["sd_model_checkpoint"])
        return self.model

    def generate(self, prompt: str, seed: int, steps: int, guidance: float, few_step: bool) -> np.ndarray:
        size = self.settings.resolution
        body = {"prompt": prompt, "negative_prompt": "", "seed": int(seed), "subseed": -1, "subseed_strength": 0,
                "steps": int(steps), "cfg_scale": float(guidance),
                "width": size, "height": size, "batch_size": 1, "n_iter": 1, "send_images": True, "save_images": False}
        if few_step:
            body["sampler_name"] = self.few_step_sampler
        answer = self.client.call("POST", "/sdapi/v1/txt2img", body)
        if not isinstance(answer, dict) or not isinstance(answer.get("images"), list) or not answer["images"]:
            raise RequestFailed("an answer without images")
        self.check_same_model(answer.get("info"))
        return decode_image(answer["images"][0], size)

    def check_same_model(self, info: object) -> None:
        """The model the server says it used must be the one the run started with."""
        try:
            reported = json.loads(info).get("sd_model_name") if isinstance(info, str) else None
        except (ValueError, AttributeError):
            reported = None
        if reported and self.model and reported != self.model and not self.model.startswith(reported):
            raise MemscanError(f"{self.client.base}: the server changed its model mid-run ({self.model} -> {reported}); "
                               "memscan never mixes two models in one run: run the scan again to start one for the new model")


class OpenAIImages:
    """OpenAI-compatible ``POST /v1/images/generations``: unseeded, so a seed is only a draw index."""

    seeded = False
    defaults = FamilyDefaults(1, 0.0, (), "an unseeded images API: steps and guidance are the service's own")

    def __init__(self, client: HttpClient, settings: HttpConfig):
        self.client, self.settings = client, settings

    def served_model(self) -> str:
        models = self.client.call("GET", "/v1/models")
        if not isinstance(models, dict) or not isinstance(models.get("data"), list):
            raise MemscanError(f"{self.client.base}/v1/models: not an OpenAI-compatible API answer (no data list)")
        return ",".join(sorted(str(m.get("id")) for m in models["data"] if isinstance(m, dict)))

    def generate(self, prompt: str, seed: int, steps: int, guidance: float, few_step: bool) -> np.ndarray:
        size = self.settings.resolution
        answer = self.client.call("POST", "/v1/images/generations",
                                  {"prompt": prompt, "n": 1, "size": f"{size}x{size}", "response_format": "b64_json"})
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list) or not data or not isinstance(data[0], dict):
            raise RequestFailed("an answer without images")
        return decode_image(data[0].get("b64_json"), size)


APIS = {"a1111": A1111, "openai": OpenAIImages}
