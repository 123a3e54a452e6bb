"""The HTTP model kind's cost, measured side by side in one run (issue 21).

    python scripts/bench_http.py [--images 64] [--steps 20]

1. Overhead per image: the demo model sampled in this process against the same model behind a
   local AUTOMATIC1111-speaking server (tests/a1111_server.py, in its own process) on this
   machine, same seeds.
2. The request rate one driver sustains against a fast server (one that answers a fixed image at
   once), by requests in flight.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from pathlib import Path


SERVER = Path(__file__).resolve().parents[1] / "tests" / "a1111_server.py"


@contextlib.contextmanager
def server_process(*flags: str):
    """The local test server in its own process (a server in this one would share its interpreter lock)."""
    process = subprocess.Popen([sys.executable, str(SERVER), *flags], stdout=subprocess.PIPE, text=True)
    try:
        yield process.stdout.readline().strip()
    finally:
        process.kill()
        process.wait()


def main() -> None:
    from scanner import demo as demo_world
    from scanner.config import HttpConfig
    from scanner.models.http_api import HttpModel
    from scanner.models.registry import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    model = load_model(demo_world.SD_MODEL)
    prompts = [r["caption"] for r in demo_world.demo_items(per_bucket=2)][:8]
    pairs = [(prompts[i % len(prompts)], i) for i in range(args.images)]
    texts, seeds = [p for p, _ in pairs], [s for _, s in pairs]

    def per_image(batch: int) -> float:
        began = time.perf_counter()
        for start in range(0, len(pairs), batch):
            model.generate(texts[start:start + batch], seeds[start:start + batch], args.steps, 5.0)
        return (time.perf_counter() - began) / len(pairs)

    batched, in_process = per_image(8), per_image(1)
    with server_process() as url:
        remote = HttpModel(url, HttpConfig(resolution=model.resolution, in_flight=4))
        began = time.perf_counter()
        remote.generate(texts, seeds, args.steps, 5.0)
        over_http = (time.perf_counter() - began) / len(pairs)
    print(f"demo model, {args.steps} steps: in process {1000 * batched:.1f} ms/image in batches of 8, "
          f"{1000 * in_process:.1f} ms/image one at a time; over HTTP {1000 * over_http:.1f} ms/image "
          f"({over_http / in_process:.2f}x one at a time, as the server samples)")

    with server_process("--fixed") as url:
        for in_flight in (1, 4, 16):
            remote = HttpModel(url, HttpConfig(resolution=32, in_flight=in_flight))
            count = 400
            began = time.perf_counter()
            remote.generate(["a prompt"] * count, list(range(count)), 1, 1.0)
            rate = count / (time.perf_counter() - began)
            print(f"fast server, {in_flight:2d} in flight: {rate:.0f} requests/s")


if __name__ == "__main__":
    main()
