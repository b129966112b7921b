#!/bin/sh
# Measures the gateway container: the image's size (built by `lockstock-gateway image build`
# from the stripped release binary; target < 30 MB) and the time from the container's start
# to a healthy /healthz (target < 2 s), over RUNS starts of `lockstock-gateway start`.
#
#   bench/container.sh [--no-build] [RUNS]      (default 5 runs)
#
# --no-build uses the release binaries already in $CARGO_TARGET_DIR (or target/).
#
# Needs a Docker engine. Uses a throw-away vault, a local control plane, and the control
# plane's own URL as the upstream (start checks only that the upstream answers HTTP).
# Everything it creates is labelled io.lockstock.bench=container and removed at the end.
set -eu

build=1
if [ "${1:-}" = "--no-build" ]; then
    build=0
    shift
fi
runs=${1:-5}
repo=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}

if [ "$build" = 1 ]; then
    echo "building lockstock-gateway, liberty and lockstock-cloud (release)..." >&2
    (cd "$repo" && cargo build --release -p lockstock-cli --bin lockstock-gateway --bin liberty \
        -p lockstock-cloud --bin lockstock-cloud >&2)
fi
gw="$target/release/lockstock-gateway"
liberty="$target/release/liberty"
cloud="$target/release/lockstock-cloud"
tag="lockstock/gateway:bench"

work=$(mktemp -d)
cloud_pid=
cleanup() {
    "$gw" stop >/dev/null 2>&1 || true
    [ -n "$cloud_pid" ] && kill "$cloud_pid" 2>/dev/null || true
    docker rmi -f "$tag" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM
export HOME="$work/home" XDG_STATE_HOME="$work/state" XDG_DATA_HOME="$work/data" \
    LIBERTY_HOME="$work/vault" LIBERTY_KEY_DIR="$work/keys" LIBERTY_KEY_STORE=file
mkdir -p "$HOME"

# The image, from the release binary (the build strips it on the way).
"$gw" image build --tag "$tag" --binary "$gw" --label io.lockstock.bench=container >&2
size=$(docker image inspect --format '{{.Size}}' "$tag")

# A control plane and a vault with what `start` needs.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cp_port=$(free_port)
"$cloud" init --data "$work/cloud" --json >"$work/keys.json"
"$cloud" serve --data "$work/cloud" --listen "127.0.0.1:$cp_port" >"$work/cloud.log" 2>&1 &
cloud_pid=$!
key() { python3 -c "import json,sys; print(json.load(open('$work/keys.json'))['$1'])"; }
"$liberty" init >/dev/null 2>&1
key admin_key | "$liberty" add LOCKSTOCK_API_KEY >/dev/null 2>&1
key gateway_key | "$liberty" add LOCKSTOCK_GATEWAY_KEY >/dev/null 2>&1
echo "http://127.0.0.1:$cp_port" | "$liberty" add LOCKSTOCK_URL >/dev/null 2>&1
echo "http://127.0.0.1:$cp_port" | "$liberty" add LOCKSTOCK_UPSTREAM_URL >/dev/null 2>&1
for _ in 1 2 3 4 5 6 7 8 9 10; do
    curl -sf "http://127.0.0.1:$cp_port/v1/health" >/dev/null 2>&1 && break
    sleep 0.2
done
"$gw" provision --name bench >/dev/null

listen="127.0.0.1:$(free_port)"
: >"$work/times"
i=0
while [ "$i" -lt "$runs" ]; do
    t0=$(date +%s%N)
    out=$("$gw" start --image "$tag" --listen "$listen" --label io.lockstock.bench=container)
    t1=$(date +%s%N)
    healthy=$(printf '%s\n' "$out" | sed -n 's/.*healthy \([0-9.]*\) s after start.*/\1/p')
    echo "$healthy $(( (t1 - t0) / 1000000 ))" >>"$work/times"
    "$gw" stop >/dev/null
    i=$((i + 1))
done

python3 - "$work/times" "$size" "$runs" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
healthy = sorted(float(r[0]) for r in rows)
total = sorted(int(r[1]) for r in rows)
size = int(sys.argv[2])
print(f"image size: {size / 1e6:.1f} MB ({size} bytes; target < 30 MB)")
print(f"container start to healthy: median {statistics.median(healthy):.2f} s, "
      f"max {healthy[-1]:.2f} s over {sys.argv[3]} starts (target < 2 s)")
print(f"whole `lockstock-gateway start` command: median {statistics.median(total)} ms")
PY
