# vitserve CPU serving image: the `serve` extra only (onnxruntime, FastAPI, uvicorn), no torch.
#
#   docker build -t vitserve:cpu .
#   docker run -p 8000:8000 -p 8001:8001 -v "$PWD/artifacts/swin_t:/models:ro" vitserve:cpu
#
# HTTP on 8000 (/classify, KServe V2, /metrics), KServe V2 over gRPC on 8001 (VITSERVE_GRPC_PORT; unset it to turn
# gRPC off).
# The artifact directory (written by `vitserve export`) is mounted at /models, or copied there by an image built
# FROM this one. Arguments after the image name replace the artifact path and may add `vitserve serve` flags.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# A CA bundle for pip where downloads pass through a TLS-intercepting proxy; empty everywhere else.
ARG PIP_CERT=""

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VITSERVE_HOST=0.0.0.0 \
    VITSERVE_PORT=8000 \
    VITSERVE_GRPC_PORT=8001

COPY pyproject.toml README.md /src/
COPY vitserve /src/vitserve
COPY models /src/models
COPY export /src/export
COPY server /src/server

# One layer: the virtual environment, the package, and the user the server runs as.
SHELL ["/bin/sh", "-eu", "-c"]
RUN if [ -z "${PIP_CERT}" ]; then unset PIP_CERT; fi; \
    python3 -m venv "${VIRTUAL_ENV}"; \
    pip install "/src[serve]"; \
    rm -rf /src; \
    groupadd --gid 10001 vitserve; \
    useradd --uid 10001 --gid vitserve --no-create-home --shell /usr/sbin/nologin vitserve; \
    mkdir -p /models

USER 10001:10001
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD ["vitserve", "healthcheck"]
ENTRYPOINT ["vitserve", "serve"]
CMD ["/models"]
