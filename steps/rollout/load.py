"""A bounded load generator for the local soak: real IMDB test reviews replayed to the router on 127.0.0.1 at a
fixed rate (seeded order, a few connections kept alive), until stopped or `max_requests` sent.

Without traffic there is nothing to judge (the policy rolls back for insufficient canary traffic), so the local
target runs this for the length of the soak; in the cluster, real users are the load.
"""
from __future__ import annotations

import asyncio
import json
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

DEMO = Path(__file__).resolve().parents[1] / "demo" / "reviews.jsonl"


def load_reviews(source: Path | None, max_chars: int = 600, limit: int = 2000) -> list[str]:
    """Reviews from a parquet/JSONL file with a `text` column (IMDB's sample_test.parquet), else the demo reviews."""
    if source is not None and source.is_file() and source.suffix == ".parquet":
        import pandas as pd

        texts = pd.read_parquet(source, columns=["text"])["text"].head(limit).tolist()
    else:
        path = source if source is not None and source.is_file() else DEMO
        texts = [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()][:limit]
    return [t[:max_chars] for t in texts if isinstance(t, str) and t.strip()]


@dataclass
class LoadGenerator:
    url: str  # the router, e.g. http://127.0.0.1:18100
    reviews: list[str]
    rps: float = 20.0
    concurrency: int = 4
    max_requests: int = 100_000
    seed: int = 0
    model: str = "sentiment"
    statuses: Counter = field(default_factory=Counter)
    by_backend: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://127.0.0.1", "http://localhost")):
            raise ValueError(f"the local load generator only sends to 127.0.0.1, not {self.url}")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    async def _run(self) -> None:
        from aiohttp import ClientSession, ClientTimeout, TCPConnector

        order = list(range(len(self.reviews)))
        random.Random(self.seed).shuffle(order)
        gate = asyncio.Semaphore(self.concurrency)
        endpoint = f"{self.url}/v1/models/{self.model}:predict"
        loop = asyncio.get_running_loop()
        start = loop.time()
        pending: set[asyncio.Task] = set()
        async with ClientSession(timeout=ClientTimeout(total=30),
                                 connector=TCPConnector(limit=self.concurrency)) as session:

            async def one(text: str) -> None:
                async with gate:
                    try:
                        async with session.post(endpoint, json={"instances": [text]}) as answer:
                            await answer.read()
                            self.statuses[answer.status] += 1
                            self.by_backend[answer.headers.get("x-sentimentops-backend", "?")] += 1
                    except (TimeoutError, OSError):
                        self.statuses["connection-error"] += 1

            for i in range(self.max_requests):
                if self._stop.is_set():
                    break
                # Open loop at a fixed rate; the semaphore bounds what is in flight when the server is slower.
                delay = start + i / self.rps - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if len(pending) >= self.concurrency * 4:
                    _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                task = asyncio.ensure_future(one(self.reviews[order[i % len(order)]]))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.wait(pending, timeout=30)

    def start(self) -> LoadGenerator:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="rollout-load", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        return {"statuses": {str(k): v for k, v in sorted(self.statuses.items(), key=str)},
                "backends": dict(self.by_backend)}

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
