"""Dynamic micro-batching: concurrent requests share one ONNX Runtime call.

    CIFARLAB_MAX_BATCH_SIZE=32 CIFARLAB_MAX_WAIT_MS=2 cifarlab serve

Each `/predict` request puts its decoded image on an asyncio queue and awaits a future. One
worker task takes the first queued image, then everything already queued behind it (up to
`max_batch_size`), and runs the whole batch in a dedicated inference thread, so the event
loop keeps accepting and parsing requests meanwhile. While a batch runs, new requests pile up
in the queue and form the next batch: under load, batches grow by themselves.

The worker waits for company only when there is evidence of concurrency: if it found more
than one image queued and the batch is not full, it waits up to `max_wait_ms` (in total) for
more to arrive, and stops waiting as soon as the batch is full. A lone request (an empty queue
behind it) is sent to the model at once and never waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

import numpy as np

log = logging.getLogger(__name__)

R = TypeVar("R")


class BatcherClosedError(RuntimeError):
    """The batcher is stopped (the server is shutting down)."""


class MicroBatcher(Generic[R]):
    """Group `submit(image)` calls into calls of `run_batch(images) -> results`.

    `run_batch` takes a stacked uint8 array `(B, ...)` and returns `B` results in order; it
    runs in one dedicated thread, never on the event loop and never concurrently with itself.
    `on_batch(size)` is called (on the event loop) for every batch, e.g. for metrics.
    """

    def __init__(
        self,
        run_batch: Callable[[np.ndarray], Sequence[R]],
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 2.0,
        on_batch: Callable[[int], None] | None = None,
        decode: Callable[[bytes], np.ndarray] | None = None,
        prepare: Callable[[list[np.ndarray]], np.ndarray] = np.stack,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.on_batch = on_batch
        # Small uploads may be submitted as bytes and decoded here, in the inference thread:
        # one thread hop per batch instead of one per request, and no GIL hand-offs between
        # decode threads and a busy event loop. (Large files are decoded before submitting,
        # so they never hold up other requests' inference.)
        self.decode = decode
        # Turns the batch's items into the one array `run_batch` takes (default: stack them);
        # the API uses it to mix uint8 images with already normalised tensors.
        self.prepare = prepare
        self._queue: asyncio.Queue[tuple[np.ndarray | bytes, asyncio.Future[R]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._inflight: list[asyncio.Future[R]] = []

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    async def start(self) -> None:
        if self.running:
            return
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cifarlab-infer")
        self._worker = asyncio.create_task(self._work(), name="cifarlab-batcher")

    async def stop(self) -> None:
        """Stop the worker; requests still queued fail with `BatcherClosedError`."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        pending = list(self._inflight)
        if self._queue is not None:
            while not self._queue.empty():
                pending.append(self._queue.get_nowait()[1])
        for fut in pending:
            if not fut.done():
                fut.set_exception(BatcherClosedError("the server is shutting down"))
        self._inflight = []
        if self._executor is not None:
            # Wait for a batch still running in the inference thread, without blocking the loop.
            executor, self._executor = self._executor, None
            await asyncio.to_thread(executor.shutdown, wait=True)

    async def submit(self, image: np.ndarray | bytes) -> R:
        """Queue one image (an array, or file bytes when `decode` is set) and await its result.

        Exceptions of `run_batch` propagate to every request of the batch; a decode error only
        to its own request.
        """
        if self._queue is None or not self.running:
            raise BatcherClosedError("the batcher is not running; call start() first")
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((image, fut))
        return await fut

    async def _work(self) -> None:
        assert self._queue is not None
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            self._drain(batch)
            if 1 < len(batch) < self.max_batch_size and self.max_wait > 0:
                # Others arrived together with the first: more are probably on the way.
                deadline = loop.time() + self.max_wait
                while len(batch) < self.max_batch_size:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        batch.append(await asyncio.wait_for(queue.get(), remaining))
                    except TimeoutError:
                        break
                    self._drain(batch)
            # Requests whose client went away (future cancelled) need no inference.
            batch = [(img, fut) for img, fut in batch if not fut.done()]
            if not batch:
                continue
            await self._run(loop, batch)

    def _drain(self, batch: list[tuple[np.ndarray | bytes, asyncio.Future[R]]]) -> None:
        assert self._queue is not None
        while len(batch) < self.max_batch_size and not self._queue.empty():
            batch.append(self._queue.get_nowait())

    def _process(self, items: list[np.ndarray | bytes]) -> list[R | Exception]:
        """In the inference thread: decode what is still bytes, then one `run_batch` call."""
        images: list[np.ndarray] = []
        slots: list[int | Exception] = []  # index into images, or this item's decode error
        for item in items:
            if isinstance(item, bytes):
                if self.decode is None:
                    raise TypeError("got file bytes but the batcher has no decode function")
                try:
                    image = self.decode(item)
                except Exception as exc:
                    slots.append(exc)
                    continue
            else:
                image = item
            slots.append(len(images))
            images.append(image)
        results: Sequence[R] = self.run_batch(self.prepare(images)) if images else []
        if len(results) != len(images):
            raise RuntimeError(f"run_batch returned {len(results)} results for {len(images)}")
        return [slot if isinstance(slot, Exception) else results[slot] for slot in slots]

    async def _run(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[tuple[np.ndarray | bytes, asyncio.Future[R]]],
    ) -> None:
        if self.on_batch is not None:
            self.on_batch(len(batch))
        self._inflight = [fut for _, fut in batch]
        try:
            results = await loop.run_in_executor(
                self._executor, self._process, [item for item, _ in batch]
            )
        except Exception as exc:  # hand the error to every waiting request, keep serving
            log.exception("batch of %d failed", len(batch))
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            self._inflight = []
            return
        # (On cancellation the futures stay in `_inflight`, for `stop()` to fail them.)
        self._inflight = []
        for (_, fut), result in zip(batch, results, strict=True):
            if fut.done():
                continue
            if isinstance(result, Exception):
                fut.set_exception(result)
            else:
                fut.set_result(result)
