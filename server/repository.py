"""The models a server serves, as Triton and OpenVINO Model Server lay them out.

Each PATH of `vitserve serve PATH [PATH ...]` is an artifact directory (one model, named by its manifest, version 1)
or a repository directory: one folder per model, named as the model is served, holding either an artifact (version
1) or numbered version folders, each an artifact:

    models/swin_t/vitserve.json ...             models/swin_t/1/vitserve.json ...
                                                models/swin_t/2/vitserve.json ...
                                                models/swin_t/vitserve.yaml     (optional: version_policy: all)

Which versions serve is the model's version policy: `latest:N` (the N highest, Triton's default N = 1), `all`, or
`specific:V,V` (--version-policy for every model; a model folder's vitserve.yaml for one). Every version loaded gets
its own runtime and batcher (service.py); the admission limit (max_queue requests in progress) is the server's.

Load, unload and a version switch lose nothing: a version taken out of service stops being chosen at once, then
waits for the requests already routed to it, then its batcher drains, then its runtime is dropped (memory back).
New versions are loaded and warmed before they are chosen. One change at a time (a lock).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import anyio
from starlette.concurrency import run_in_threadpool

from vitserve.artifact import MANIFEST_NAME, read_manifest
from vitserve.errors import NotFoundError, RequestError, VitServeError
from vitserve.server.batching import ShuttingDownError
from vitserve.server.metrics import Metrics
from vitserve.server.service import Service, load_service, prepare
from vitserve.server.settings import Settings

log = logging.getLogger(__name__)

MODEL_CONFIG = "vitserve.yaml"  # in a model's folder: version_policy


@dataclass(frozen=True)
class VersionPolicy:
    """latest:N, all, or specific:V,V."""

    kind: str
    count: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        kind, _, rest = str(text).strip().partition(":")
        try:
            if kind == "all" and not rest:
                return cls("all")
            if kind == "latest":
                count = int(rest or 1)
                if count >= 1:
                    return cls("latest", count=count)
            if kind == "specific":
                versions = tuple(sorted({int(v) for v in rest.split(",")}))
                if versions and min(versions) >= 1:
                    return cls("specific", versions=versions)
        except ValueError:
            pass
        raise VitServeError(f"invalid version policy {text!r}: use latest:N (N >= 1), all, or specific:V,V "
                            "(version numbers >= 1)")

    def select(self, available: list[int]) -> list[int]:
        available = sorted(available)
        if self.kind == "all":
            return available
        if self.kind == "latest":
            return available[-self.count:]
        return [v for v in available if v in self.versions]

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.count}"
        return "all" if self.kind == "all" else "specific:" + ",".join(map(str, self.versions))


@dataclass
class Source:
    """A model on disk: `folder` is an artifact (`versioned` False: version 1) or holds numbered version folders."""

    name: str
    folder: Path
    versioned: bool
    policy: VersionPolicy

    def versions(self) -> dict[int, Path]:
        """The versions on disk now: a version folder counts once its manifest is there."""
        if not self.versioned:
            return {1: self.folder} if (self.folder / MANIFEST_NAME).is_file() else {}
        if not self.folder.is_dir():
            return {}
        return {int(d.name): d for d in self.folder.iterdir()
                if d.name.isdigit() and int(d.name) >= 1 and (d / MANIFEST_NAME).is_file()}


def _policy(folder: Path, default: VersionPolicy) -> VersionPolicy:
    config = folder / MODEL_CONFIG
    if not config.is_file():
        return default
    import yaml

    try:
        data = yaml.safe_load(config.read_text()) or {}
    except yaml.YAMLError as e:
        raise VitServeError(f"{config} is not valid YAML: {e}") from e
    if not isinstance(data, dict) or set(data) - {"version_policy"}:
        raise VitServeError(f"{config}: only `version_policy: latest:N | all | specific:V,V` is read here")
    return VersionPolicy.parse(data.get("version_policy", str(default)))


def find_models(paths: list[Path], default: VersionPolicy) -> dict[str, Source]:
    """Every model under `paths` (artifact or repository directories); VitServeError for a path that is neither, a
    name served twice, or no model at all."""
    found: dict[str, Source] = {}

    def add(source: Source, where: Path) -> None:
        if source.name in found:
            raise VitServeError(f"two models are named {source.name!r} ({found[source.name].folder} and {where}); "
                                "rename one folder")
        found[source.name] = source

    for path in paths:
        path = Path(path)
        if not path.is_dir():
            raise VitServeError(f"{path} is not a directory (give an artifact directory written by `vitserve "
                                "export`, or a repository of them)")
        if (path / MANIFEST_NAME).is_file():
            add(Source(read_manifest(path).name, path, False, default), path)
            continue
        for folder in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
            versioned = not (folder / MANIFEST_NAME).is_file()
            source = Source(folder.name, folder, versioned, _policy(folder, default))
            if versioned and not source.versions():
                log.warning("%s holds neither an artifact nor numbered version folders with one; skipped", folder)
                continue
            add(source, folder)
    if not found:
        raise VitServeError(f"no models in {', '.join(map(str, paths))}: each path must be an artifact directory "
                            f"(with {MANIFEST_NAME}) or hold one folder per model")
    return found


def release_memory() -> None:
    """The memory of what was just dropped, back to the system now: a collection (runtimes hold reference cycles),
    then, with glibc, malloc_trim, without which the freed heap stays in the process for later allocations (an
    unloaded model would not shrink the process; measured in docs/commands.md)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): the allocator keeps it
        pass


def check_load_parameters(parameters) -> None:
    """A load takes what is on disk: Triton's `config` and file overrides are refused, saying so."""
    if parameters:
        raise RequestError(f"load takes no parameters here (got {', '.join(sorted(parameters))}): vitserve loads "
                           "what the model's folder holds; put a new version folder there instead")


class Repository:
    """The server's models and versions; `resolve` picks the Service a request goes to."""

    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.default_policy = VersionPolicy.parse(settings.version_policy)
        self.sources = find_models(settings.artifact, self.default_policy)
        self.services: dict[str, dict[int, Service]] = {}
        self.failed: dict[tuple[str, int], str] = {}  # versions that could not load, and why
        self.unloaded: set[str] = set()  # unloaded by request: polling leaves them alone
        self.pending = 0  # inference requests between arrival and answer, all models (LimitsAndMetrics counts)
        self.started = False
        self.draining = False
        self.decode_limiter: anyio.CapacityLimiter | None = None
        self._lock: asyncio.Lock | None = None

    # -- admission -----------------------------------------------------------------------------------------------

    @property
    def full(self) -> bool:
        """At most max_queue inference requests are in progress (LimitsAndMetrics counts them, from arrival to
        answer, and refuses the next with 503 before routing and before its body is read): under overload the
        server refuses early and cheaply instead of reading and decoding work it cannot finish in time."""
        return self.pending >= self.settings.max_queue

    @property
    def refusal(self) -> str:
        """What a request refused because the server is `full` is told (HTTP 503, gRPC UNAVAILABLE)."""
        return f"{self.pending} requests are in progress, the limit is {self.settings.max_queue}; try again later"

    # -- what serves ---------------------------------------------------------------------------------------------

    def loaded(self) -> list[Service]:
        return [s for name in sorted(self.services) for _, s in sorted(self.services[name].items())]

    @property
    def only(self) -> Service:
        """The one Service of a server with one model version (tests and single-model answers)."""
        (service,) = self.loaded()
        return service

    @property
    def missing(self) -> list[str]:
        """Models marked to load (in the repository, not unloaded by request) with no version loaded."""
        return [name for name in self.sources if name not in self.unloaded and not self.services.get(name)]

    @property
    def ready(self) -> bool:
        """Every model marked to load has its versions loaded and ready (none refused), and no shutdown began."""
        if not self.started or self.draining:
            return False
        return not self.missing and all(s.ready for s in self.loaded())

    def versions(self, name: str) -> list[int]:
        """The model's versions loaded, in order."""
        return sorted(self.services.get(name, {}))

    @property
    def refused(self) -> list[Service]:
        return [s for s in self.loaded() if s.refused]

    def resolve(self, name: str | None, version: str | None) -> Service:
        """The Service for `name` (None: the only model) and `version` (None or "": its highest ready version);
        NotFoundError for what is not served, ShuttingDownError (503) for a version not ready or refused. While the
        server drains, requests that reach it are still routed (readiness already fails)."""
        if not name:
            if len(self.services) != 1:
                served = ", ".join(sorted(self.services)) or "none loaded"
                raise RequestError(f"this server serves several models ({served}): name one (?model=NAME on "
                                   "/classify)")
            name = next(iter(self.services))
        versions = self.services.get(name)
        if not versions:
            if name in self.sources:
                raise NotFoundError(f"model {name!r} is not loaded (POST /v2/repository/models/{name}/load loads it)")
            raise NotFoundError(f"unknown model {name!r}; this server serves {', '.join(sorted(self.services))}")
        if version:
            if not version.isdigit() or int(version) not in versions:
                raise NotFoundError(f"model {name!r} has no version {version!r} loaded; loaded: "
                                    f"{', '.join(map(str, sorted(versions)))}")
            service = versions[int(version)]
        else:
            ready = [v for v, s in versions.items() if s.ready]
            service = versions[max(ready or versions)]
        if not service.ready:
            raise ShuttingDownError(f"model {name!r} version {service.version} is not ready"
                                    + (f": {service.refused}" if service.refused else ""))
        return service

    def index(self, ready_only: bool = False) -> list[dict]:
        """The repository index (V2 repository extension): every version on disk with its state and reason."""
        rows = []
        for name, source in sorted(self.sources.items()):
            loaded = self.services.get(name, {})
            on_disk = source.versions()
            if name in self.unloaded and not loaded:
                rows.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": "unloaded"})
                continue
            selected = set(source.policy.select(list(on_disk)))
            for version in sorted(set(on_disk) | set(loaded)):
                service = loaded.get(version)
                if service is not None and service.ready:
                    row = {"state": "READY", "reason": ""}
                elif service is not None:
                    row = {"state": "UNAVAILABLE", "reason": service.refused or "loading"}
                elif (name, version) in self.failed:
                    row = {"state": "UNAVAILABLE", "reason": self.failed[(name, version)]}
                else:
                    reason = "unloaded" if version in selected else f"not in the version policy {source.policy}"
                    row = {"state": "UNAVAILABLE", "reason": reason}
                rows.append({"name": name, "version": str(version), **row})
        return [r for r in rows if r["state"] == "READY"] if ready_only else rows

    # -- loading ---------------------------------------------------------------------------------------------------

    def load_all(self) -> None:
        """Loads every model's versions in its policy, proof re-run and warmed: before the server starts, in the
        calling thread; the first error stops it (VitServeError)."""
        for source in self.sources.values():
            on_disk = source.versions()
            for version in source.policy.select(list(on_disk)):
                self.services.setdefault(source.name, {})[version] = self._load(source.name, version, on_disk[version])

    def _load(self, name: str, version: int, artifact: Path) -> Service:
        """A version loaded, its proof re-run and warmed (blocking)."""
        return prepare(load_service(self.settings, artifact, self.metrics, name=name, version=version))

    def start(self) -> None:
        """Starts every loaded version's batcher (on the running event loop) and opens for requests."""
        # decoding is CPU work: more threads than cores only add memory (a malloc arena each) and contention
        self.decode_limiter = anyio.CapacityLimiter(os.cpu_count() or 1)
        self._lock = asyncio.Lock()
        for service in self.loaded():
            self._open(service)
        self.started = True

    def _open(self, service: Service) -> None:
        service.decode_limiter = self.decode_limiter
        service.batcher.start()
        service.ready = service.refused is None

    async def load(self, name: str) -> None:
        """Loads the model, or reloads it: versions its policy now selects are loaded (and warmed) before any
        version it no longer selects is retired. VitServeError (HTTP 400) when a version fails to load."""
        async with self._lock:
            source = self.sources.get(name) or self._discover(name)
            if source is None:
                raise NotFoundError(f"no model {name!r} in {', '.join(map(str, self.settings.artifact))}")
            self.unloaded.discard(name)
            problems = await self._apply(source)
        if problems:
            raise RequestError(f"failed to load {name!r}: {'; '.join(problems)}")

    async def unload(self, name: str) -> None:
        """Takes every version of the model out of service; requests already routed to them are answered."""
        async with self._lock:
            if name not in self.sources and name not in self.services:
                raise NotFoundError(f"unknown model {name!r}")
            self.unloaded.add(name)
            await self._retire_all(name)

    async def poll(self) -> None:
        """Re-reads the repositories: new models and versions load, versions gone from disk or from the policy
        retire; models unloaded by request stay unloaded."""
        async with self._lock:
            try:
                found = find_models(self.settings.artifact, self.default_policy)
            except VitServeError as e:
                log.warning("polling the model repository: %s; nothing changed", e)
                return
            for name in set(self.sources) - set(found):
                log.info("%s is gone from the repository: unloading it", name)
                await self._retire_all(name)
            self.sources = found
            for source in found.values():
                if source.name not in self.unloaded:
                    await self._apply(source, quiet=True)

    def _discover(self, name: str) -> Source | None:
        try:
            found = find_models(self.settings.artifact, self.default_policy)
        except VitServeError:
            return None
        if name in found:
            self.sources[name] = found[name]
        return found.get(name)

    async def _apply(self, source: Source, quiet: bool = False) -> list[str]:
        """Brings the model to its policy: loads what is selected and not loaded, then retires what is loaded and
        no longer selected (only once a selected version serves). Returns the loading errors."""
        on_disk = source.versions()
        wanted = source.policy.select(list(on_disk))
        current = self.services.setdefault(source.name, {})
        problems = []
        for version in wanted:
            if version in current or (quiet and (source.name, version) in self.failed):
                continue
            log.info("loading %s version %d from %s", source.name, version, on_disk[version])
            try:
                service = await run_in_threadpool(self._load, source.name, version, on_disk[version])
            except VitServeError as e:
                self.failed[(source.name, version)] = str(e)
                problems.append(f"version {version}: {e}")
                log.error("%s version %d failed to load: %s", source.name, version, e)
                continue
            self.failed.pop((source.name, version), None)
            self._open(service)
            current[version] = service  # from here on, requests without a version go to the highest ready one
            log.info("%s version %d %s", source.name, version, "serves" if service.ready else
                     f"is refused: {service.refused}")
        if any(current[v].ready for v in wanted if v in current):
            for version in sorted(set(current) - set(wanted)):
                await self._retire(source.name, version)
        if not current:
            del self.services[source.name]
        return problems

    async def _retire_all(self, name: str) -> None:
        for version in self.versions(name):
            await self._retire(name, version)

    async def _retire(self, name: str, version: int) -> None:
        """Out of service: no longer chosen; the requests routed to it finish; its batcher drains; its runtime and
        metric series are dropped."""
        versions = self.services[name]
        service = versions.pop(version)
        if not versions:
            del self.services[name]
        service.ready = False
        log.info("unloading %s version %d (%d requests in progress)", name, version, service.in_use)
        await service.drain(self.settings.timeout_ms / 1000)
        self.metrics.forget(name, str(version))
        del service, versions
        await run_in_threadpool(release_memory)
        log.info("%s version %d unloaded", name, version)

    async def stop(self) -> None:
        """Shutdown: every version drains (requests already routed are answered)."""
        self.draining = True
        for service in self.loaded():
            service.ready = False
        await asyncio.gather(*(s.drain(self.settings.timeout_ms / 1000) for s in self.loaded()))

    async def watch(self, every_s: float) -> None:
        """--poll-s: polls the repositories until cancelled."""
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.poll()
            except Exception:
                log.exception("polling the model repository failed")
