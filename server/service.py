"""One served model version: its runtime, batcher, labels and metrics (`Service`), loaded by `load_service`, its
proof re-run by `check_proof` and warmed by `warm_up` before it takes requests. The repository (repository.py)
holds every Service of the server."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread
import numpy as np
from PIL import Image

from vitserve import runtimes
from vitserve.artifact import Manifest, read_labels
from vitserve.errors import ArtifactError, RequestError, VitServeError
from vitserve.preprocess import decode_image, draft_side, transform
from vitserve.runtimes.base import Runtime
from vitserve.server.batching import BatchStats, DeadlineExceededError, DynamicBatcher
from vitserve.server.metrics import Metrics, ModelMetrics
from vitserve.server.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Service:
    """Everything a request to one model version needs: the model, its batcher, limits, metrics, and whether it
    takes work."""

    settings: Settings
    name: str  # the served name (the manifest's for an artifact given as such; the folder's in a repository)
    version: int
    artifact: Path
    manifest: Manifest
    labels: list[str]
    backend: Runtime  # the runtime that runs the artifact (vitserve.runtimes; --backend names it)
    batcher: DynamicBatcher
    metrics: ModelMetrics
    ready: bool = False
    warmed_batch_sizes: list[int] = field(default_factory=list)
    proof: dict | None = None  # the artifact's proof re-run by this backend (Runtime.check_proof); None: none
    choice: dict | None = None  # how --backend auto --precision auto chose the backend (runtimes.choose)
    refused: str | None = None  # why the model is kept out of service (its proof failed, without --allow-drift)
    on_device: bool = False  # images decoded by the runtime on its device (--decode): the batcher takes files
    in_use: int = 0  # requests routed to this version and not yet answered (an unload waits for them)
    decode_limiter: anyio.CapacityLimiter | None = None  # decode threads at once, shared by the server's models
    _idle: asyncio.Event | None = None

    def decode_one(self, data: bytes) -> np.ndarray:
        preprocess = self.manifest.preprocess
        min_side = draft_side(preprocess) if self.settings.fast_jpeg else None
        return transform(decode_image(data, self.settings.max_pixels, min_side), preprocess)

    async def decode(self, blobs: list[bytes]) -> np.ndarray | list[bytes]:
        """Encoded images -> (N, C, H, W), decoded in a worker thread so the event loop stays free; with --decode
        device, the files as they are: the runtime decodes them in the batch, on its device."""
        if self.on_device:
            return blobs
        started = time.perf_counter()
        arrays = await anyio.to_thread.run_sync(lambda: [self.decode_one(b) for b in blobs],
                                                limiter=self.decode_limiter)
        self.metrics.decode_seconds.observe(time.perf_counter() - started)
        return np.stack(arrays)

    def check_image_count(self, count: int) -> None:
        if count == 0:
            raise RequestError("no images in the request")
        if count > self.settings.max_images:
            raise RequestError(f"{count} images in one request; the limit is {self.settings.max_images}")

    async def infer(self, images: np.ndarray, arrived: float) -> tuple[np.ndarray, BatchStats]:
        """The batch's outputs; DeadlineExceededError once timeout_ms has passed since `arrived` (reading and
        decoding count against it)."""
        # While draining, requests that reached the server are still served; the batcher refuses work only once
        # the lifespan (or an unload) stops it, after every request routed here has been answered.
        remaining = self.settings.timeout_ms / 1000 - (time.perf_counter() - arrived)
        if remaining <= 0:
            raise DeadlineExceededError(f"no answer within {self.settings.timeout_ms:.0f} ms (reading and decoding "
                                        "the request took all of it)")
        try:
            answer = await self.batcher.submit(images, remaining)
            # an answer ready in time whose coroutine resumed late (a busy event loop) is late all the same
            in_time = time.perf_counter() - arrived <= self.settings.timeout_ms / 1000
        except DeadlineExceededError:
            in_time = False
        if not in_time:
            raise DeadlineExceededError(f"no answer within {self.settings.timeout_ms:.0f} ms") from None
        return answer

    @contextlib.contextmanager
    def serving(self):
        """Counts a request routed to this version until it is answered, so that an unload lets it finish here."""
        self.in_use += 1
        try:
            yield self
        finally:
            self.in_use -= 1
            if self.in_use == 0 and self._idle is not None:
                self._idle.set()

    async def drain(self, timeout_s: float) -> None:
        """Waits (up to `timeout_s`) until no request routed here is still in progress, then stops the batcher
        (which answers what it still holds)."""
        if self.in_use:
            self._idle = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout_s)
        await self.batcher.stop(drain_timeout_s=timeout_s)


def load_service(settings: Settings, artifact: Path, metrics: Metrics, name: str | None = None,
                 version: int = 1) -> Service:
    """Loads the artifact into a backend and builds the batcher; VitServeError when the artifact is unusable."""
    choice = None
    if settings.backend == runtimes.AUTO and settings.precision == runtimes.AUTO:
        from vitserve.runtimes.choose import choose

        backend, choice = choose(artifact, threads=settings.threads, device=settings.device)
    else:
        backend = runtimes.load(artifact, settings.backend, threads=settings.threads, device=settings.device,
                                precision=settings.precision)
    manifest = backend.manifest
    if settings.max_batch_size > manifest.max_batch:
        raise VitServeError(f"--max-batch-size {settings.max_batch_size} exceeds the max_batch of {artifact} "
                            f"({manifest.max_batch}); lower it or re-export with --max-batch {settings.max_batch_size}")
    labels = read_labels(artifact / manifest.labels_file)
    name = name or manifest.name
    series = metrics.for_model(name, str(version))

    def on_batch(size: int, seconds: float, waits: list[float]) -> None:
        series.batch_size.observe(size)
        series.inference_seconds.observe(seconds)
        for wait in waits:
            series.queue_seconds.observe(wait)

    on_device = settings.decode == "device" or (settings.decode == "auto" and backend.on_gpu)
    if on_device:
        try:
            backend.decode_on_device(settings.max_pixels)
        except ArtifactError as e:
            if settings.decode == "device":
                raise
            log.warning("%s; images are decoded on the CPU", e)
            on_device = False
    batcher = DynamicBatcher(backend.run_encoded if on_device else backend,
                             collate=list if on_device else np.stack,
                             max_batch_size=settings.max_batch_size, max_wait_s=settings.max_wait_ms / 1000,
                             max_queue=settings.max_queue,
                             batches_in_flight=settings.batches_in_flight or backend.batches_in_flight,
                             on_batch=on_batch, on_queue_depth=series.queue_depth.set,
                             on_computing=series.batches_computing.set)
    return Service(settings, name, version, artifact, manifest, labels, backend, batcher, series, choice=choice,
                   on_device=on_device)


def check_proof(service: Service) -> None:
    """Re-runs the artifact's proof through the backend that will serve it (vitserve.proof): passed, the model may
    serve; failed, it is kept out of service (`refused`, which /readyz and every refused request give) unless
    --allow-drift; the outcome in the log and the vitserve_proof metric."""
    report = service.proof = service.choice["proof"] if service.choice else service.backend.check_proof()
    if service.choice:
        log.info("%s: backend %s, %s", service.name, service.choice["chosen"], service.choice["why"])
    state = "none" if report is None else "passed" if report["passed"] else "failed"
    service.metrics.set_proof(state)
    if report is None:
        log.warning("%s has no proof (exported before vitserve kept one): its answers are not re-checked here; "
                    "export it again to have them checked", service.artifact)
    elif report["passed"]:
        log.info("%s: proof: the artifact's images give the fp32 model's answers in %s (max |logit difference| "
                 "%.3g, lowest cosine %.6f)", service.name, report["runtime"], report["max_abs_diff"],
                 report["min_cosine"])
    elif service.settings.allow_drift:
        log.warning("%s: %s; serving anyway (--allow-drift)", service.name, report["reason"])
    else:
        service.refused = f"{report['reason']}; not serving it (--allow-drift serves anyway)"
        log.error("%s: %s", service.name, service.refused)


def proof_state(service: Service) -> str:
    """What /readyz says of the proof."""
    report = service.proof
    if report is None:
        return "none: the artifact was exported before vitserve kept one"
    if report["passed"]:
        return f"passed in {report['runtime']}"
    return f"failed, serving anyway (--allow-drift): {report['reason']}"


def warm_batch_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, ... up to max_batch_size, and max_batch_size itself."""
    sizes, size = [], 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch_size]


def warm_up(service: Service) -> None:
    service.backend.reserve(service.batcher.batches_in_flight)  # what each batch in flight keeps of its own
    shape = service.manifest.input.shape[1:]
    sample = _sample_jpeg(shape[-1]) if service.on_device else None
    for size in warm_batch_sizes(service.settings.max_batch_size):
        if service.on_device:  # the decoder's first calls too
            service.backend.run_encoded([sample] * size)
        else:
            service.backend(np.zeros((size, *shape), dtype=np.float32))
        service.warmed_batch_sizes.append(size)


def _sample_jpeg(side: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (side * 2, side * 2), (128, 96, 64)).save(out, "JPEG")
    return out.getvalue()


def prepare(service: Service) -> Service:
    """The proof re-run, then the warm-up (the proof's refusal skips it): what a loaded Service needs before it
    serves. Blocking: run it in a worker thread."""
    check_proof(service)
    if service.refused is None:
        warm_up(service)
    return service
