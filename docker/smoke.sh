#!/usr/bin/env bash
# Smoke-test a built image without a container runtime daemon (`podman run` cannot start
# containers on the development machine): `buildah run --isolation chroot`, as the image's
# unprivileged user, checks that `vigil replay` of the bundled clip succeeds, that `vigil
# serve` answers /healthz, and that the user cannot write outside /tmp and /data (so the root
# filesystem can be mounted read-only).   IMAGE=localhost/vigil:cpu PORT=18080 docker/smoke.sh
set -euo pipefail
IMAGE=${IMAGE:-localhost/vigil:cpu}
PORT=${PORT:-18080}
ctr=$(buildah from --quiet "$IMAGE")
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
run() { buildah run --isolation chroot --user 10001:10001 "$ctr" -- "$@"; }

run id -u | grep -qx 10001
run vigil replay assets/one-by-one-person-detection.mp4 --out /tmp/replay --max-frames 40 --quiet
run python3 -c "
import json; s = json.load(open('/tmp/replay/summary.json'))
assert s['frames_processed'] == 40, s['frames_processed']
assert sum(1 for _ in open('/tmp/replay/messages.jsonl')) == 40
print('smoke: replay ok,', s['frames_processed'], 'frames,', s['model']['name'], s['model']['precision'])"

run sh -c "vigil serve --config configs/sample.yaml --port $PORT & pid=\$!
python3 - <<'PY'
import sys, time, urllib.request
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen('http://127.0.0.1:$PORT/healthz', timeout=2) as r:
            if r.status == 200:
                print('smoke: serve /healthz', r.read().decode()); sys.exit(0)
    except OSError:
        time.sleep(0.5)
sys.exit('smoke: /healthz never answered')
PY
status=\$?; kill -TERM \$pid; wait \$pid; exit \$status"

if run sh -c 'touch /opt/vigil/x || touch /x' 2>/dev/null; then
  echo "smoke: the image user could write to the root filesystem" >&2; exit 1
fi
run sh -c 'touch /tmp/ok /data/ok'
echo "smoke: $IMAGE ok"
