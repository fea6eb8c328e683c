#!/usr/bin/env bash
# Build vitserve's serving image with buildah, on machines without a Docker engine or a reachable image registry.
#
#   deploy/build-image.sh [cpu|gpu] [TAG] [BUILDAH-ARG...]     default: cpu, localhost/vitserve:cpu
#   deploy/build-image.sh gpu localhost/vitserve:gpu --build-arg TENSORRT=0
#
# Where Docker works, `docker build -t vitserve:cpu .` does the same. Without a registry, the base image
# (python:3.11-slim) is replaced by a local Debian bookworm root file system (Python 3.11) made with debootstrap
# once and kept as localhost/python-base:3.11; set BASE_IMAGE to use another. Needs root, buildah and debootstrap.
set -euo pipefail
cd "$(dirname "$0")/.."

flavour=${1:-cpu}
tag=${2:-localhost/vitserve:$flavour}
shift $(($# < 2 ? $# : 2))  # the rest go to buildah bud
case "$flavour" in
    cpu) dockerfile=Dockerfile ;;
    gpu) dockerfile=Dockerfile.gpu ;;
    *) echo "usage: $0 [cpu|gpu] [TAG] [BUILDAH-ARG...]" >&2; exit 2 ;;
esac
export STORAGE_DRIVER=${STORAGE_DRIVER:-vfs}  # no overlay file system in unprivileged sandboxes

base=${BASE_IMAGE:-localhost/python-base:3.11}
if [ -z "${BASE_IMAGE:-}" ] && ! buildah inspect --type image "$base" >/dev/null 2>&1; then
    echo "making $base with debootstrap (Debian bookworm, Python 3.11)" >&2
    rootfs=$(mktemp -d)
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    container=$(buildah from scratch)
    mountpoint=$(buildah mount "$container")
    cp -a "$rootfs"/. "$mountpoint"/
    buildah umount "$container" >/dev/null
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd python3 "$container"
    buildah commit --quiet "$container" "$base" >/dev/null
    buildah rm "$container" >/dev/null
fi

args=(--isolation chroot --format docker --layers=false -f "$dockerfile" -t "$tag" --build-arg "BASE_IMAGE=$base")
# Downloads through a TLS-intercepting proxy need the host's CA bundle; harmless elsewhere.
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    args+=(-v /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro --build-arg PIP_CERT=/run/host-ca.crt)
fi
buildah bud "${args[@]}" "$@" . >&2
echo "$tag"
