#!/usr/bin/env bash
# `make image`: build docker/Dockerfile.cpu (or $DOCKERFILE) as $IMAGE with whichever of docker,
# podman or buildah works here.
#
# BASE (the Dockerfile's ARG) defaults to the official debian:bookworm-slim when a registry is
# reachable through docker/podman; otherwise (or with BASE=localhost/debian:bookworm) a Debian
# bookworm base is made from Debian's packages with mmdebstrap and imported once. The local
# CPU torch wheel is copied into docker/wheels/ so the build never fetches a CUDA torch, and
# the host's CA bundle is mounted for the build's pip only (never baked in).
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-localhost/vigil:cpu}
DOCKERFILE=${DOCKERFILE:-docker/Dockerfile.cpu}
BASE=${BASE:-}
PY=${PY:-.venv/bin/python}
CA=/etc/ssl/certs/ca-certificates.crt

tool=""
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then tool=docker
elif command -v buildah >/dev/null; then tool=buildah
elif command -v podman >/dev/null; then tool=podman
else echo "make image: needs docker, podman or buildah" >&2; exit 2
fi

if [ -z "$BASE" ]; then
  if [ "$tool" = docker ]; then BASE=debian:bookworm-slim; else BASE=localhost/debian:bookworm; fi
fi

have_image() {
  case $tool in
    docker) docker image inspect "$1" >/dev/null 2>&1 ;;
    *) buildah inspect --type image "$1" >/dev/null 2>&1 ;;
  esac
}

if [ "$BASE" = localhost/debian:bookworm ] && ! have_image "$BASE"; then
  command -v mmdebstrap >/dev/null || { echo "make image: needs mmdebstrap for $BASE" >&2; exit 2; }
  tar=$(mktemp -d)/rootfs.tar
  echo "image: making $BASE with mmdebstrap (Debian bookworm, minbase)"
  mmdebstrap --quiet --variant=minbase bookworm "$tar"
  case $tool in
    docker) docker import "$tar" "$BASE" ;;
    podman) podman import "$tar" "$BASE" ;;
    buildah)
      ctr=$(buildah from scratch)
      buildah add "$ctr" "$tar" / >/dev/null
      buildah commit --quiet "$ctr" "$BASE" >/dev/null
      buildah rm "$ctr" >/dev/null ;;
  esac
  rm -rf "$(dirname "$tar")"
fi

mkdir -p docker/wheels
if ! ls docker/wheels/torch-2.13.0*.whl >/dev/null 2>&1 && [ -x "$PY" ]; then
  # the CPU wheel from this machine's pip configuration (a local wheel folder here)
  "$PY" -m pip download -q torch==2.13.0 --no-deps -d docker/wheels 2>/dev/null || true
  case $(ls docker/wheels/torch-*.whl 2>/dev/null) in
    *+cpu*) ;;
    *) rm -f docker/wheels/torch-*.whl ;;  # only a CPU build may go in; else TORCH_INDEX
  esac
fi

mount=()
[ -f "$CA" ] && mount=(-v "$CA:/run/host-ca.crt:ro")
echo "image: building $IMAGE from $DOCKERFILE (FROM $BASE) with $tool"
case $tool in
  docker) DOCKER_BUILDKIT=1 docker build --build-arg BASE="$BASE" -f "$DOCKERFILE" -t "$IMAGE" . ;;
  podman) podman build --build-arg BASE="$BASE" "${mount[@]}" -f "$DOCKERFILE" -t "$IMAGE" . ;;
  buildah) buildah bud --quiet --isolation chroot --layers --build-arg BASE="$BASE" \
             "${mount[@]}" -f "$DOCKERFILE" -t "$IMAGE" . ;;
esac
echo "image: $IMAGE built"
