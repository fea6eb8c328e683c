"""Server settings: `vitserve serve` flags, or VITSERVE_* environment variables for `uvicorn --factory`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from vitserve import runtimes

# --backend, --device, --precision: the choices the runtime registry states
Backend = Literal[(runtimes.AUTO, *runtimes.NAMES)]
Device = Literal[runtimes.DEVICES]
Precision = Literal[runtimes.PRECISIONS]


class Settings(BaseSettings):
    """Every field can be set as VITSERVE_<FIELD> (e.g. VITSERVE_ARTIFACT=artifacts/swin_t)."""

    model_config = SettingsConfigDict(env_prefix="VITSERVE_", extra="ignore")

    artifact: Annotated[list[Path], NoDecode] = Field(
        description="artifact directories written by `vitserve export`, or repositories of them (one folder per "
        "model, optionally with numbered version folders); VITSERVE_ARTIFACT separates several with commas")
    version_policy: str = Field("latest:1", description="which versions of a model in a repository serve: latest:N "
                                "(the N highest), all, or specific:V,V (a model folder's vitserve.yaml "
                                "`version_policy:` overrides it for that model)")
    poll_s: float | None = Field(None, gt=0, description="re-read the repositories every this many seconds: new "
                                 "models and versions load, versions gone or out of the policy unload (requests "
                                 "already routed to them finish); off when unset")
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port")
    grpc_port: int | None = Field(None, ge=0, le=65535, description="also serve the KServe V2 protocol over gRPC on "
                                  "this port, same host (0: a free port, logged); off when unset")
    max_batch_size: int = Field(32, ge=1, description="a batch closes when it holds this many images")
    max_wait_ms: float = Field(5.0, ge=0, description="... or this long after its first image arrived")
    max_queue: int = Field(256, ge=1, description="images waiting for a batch, and inference requests in progress: "
                           "beyond this many, 503 at once")
    batches_in_flight: int | None = Field(None, ge=1, description="batches computing at once; unset: the backend's "
                                          "(2 for a torch package with CUDA graphs, where one batch's host work "
                                          "overlaps another's on the GPU, else 1)")
    timeout_ms: float = Field(10_000, gt=0, description="a request not answered by then gets 504")
    threads: int | None = Field(None, ge=1, description="inference threads; unset: all cores")
    backend: Backend = Field("auto", description="the runtime that runs the artifact; auto with --precision auto: "
                             "the fastest runtime and precision here that runs the artifact and passes its proof (a "
                             "short timing at start-up); auto with another --precision: the one it was exported for "
                             "(onnxruntime for ONNX, openvino for an OpenVINO IR, torch / tensorrt for --format "
                             "torch / tensorrt)")
    device: Device = Field("auto", description="onnxruntime: cpu, cuda or tensorrt (auto: CUDA where onnxruntime-gpu "
                           "sees a GPU); torch: the package's own")
    precision: Precision = Field("auto", description="openvino: f32 or bf16 (auto: with --backend auto, chosen with "
                                 "it; with --backend openvino, bf16 where the CPU has it)")
    decode: Literal["auto", "cpu", "device"] = Field(
        "auto", description="where images are decoded and resized: cpu (the server's threads), or device (on the "
        "model's device, by the torch runtime: JPEGs by torchvision's decoder, nvJPEG on a GPU; the encoded bytes "
        "cross to the GPU, not float32 pixels); auto: device for a torch package on a GPU, else cpu")
    max_body_mb: float = Field(32.0, gt=0, description="larger request bodies get 413")
    max_pixels: int = Field(40_000_000, ge=1, description="larger images (width x height) get 413")
    max_images: int = Field(64, ge=1, description="images per request")
    access_log: bool = Field(False, description="log one line per request: client, method, path, status, "
                             "milliseconds, request id")
    fast_jpeg: bool = Field(False, description="decode large JPEGs at 1/2 to 1/8 scale, no less than twice the "
                            "model's resize: a fraction of the decoding work, pixels close to (not equal to) a full "
                            "decode's")
    api_key: SecretStr | None = Field(None, description="if set, required on inference routes (environment only: "
                                      "VITSERVE_API_KEY)")
    allow_drift: bool = Field(False, description="serve even when the artifact's proof (a few inputs and the fp32 "
                              "model's answers, re-run here before serving) does not hold on this runtime and "
                              "device; /readyz, the log and vitserve_proof say so")
    no_ui: bool = Field(False, description="leave out the try-it page (GET /: pick images, see their top classes; "
                        "it calls POST /classify like any client)")
    drain_grace_s: float = Field(1.0, ge=0, description="after SIGTERM: readiness fails at once, requests keep being "
                                 "read and served this long, then no new connections are accepted")

    # Fields that are not `vitserve serve` flags: the positional ARTIFACT, and the key (kept out of process lists)
    NOT_FLAGS: ClassVar[frozenset[str]] = frozenset({"artifact", "api_key"})

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @field_validator("artifact", mode="before")
    @classmethod
    def _paths(cls, value):
        """One path or several: a list, or a string with commas (VITSERVE_ARTIFACT)."""
        if isinstance(value, (str, Path)):
            value = [p.strip() for p in str(value).split(",") if p.strip()]
        return value

    @field_validator("artifact")
    @classmethod
    def _some_path(cls, value: list[Path]) -> list[Path]:
        if not value:
            raise ValueError("give at least one artifact or repository directory")
        return value

    @model_validator(mode="after")
    def _distinct_ports(self) -> Settings:
        if self.grpc_port and self.grpc_port == self.port:
            raise ValueError(f"the gRPC port and the HTTP port are both {self.port}; give them different ports")
        return self
