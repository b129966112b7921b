#!/bin/sh
# Benchmark `liberty show NAME` (release build, no passphrase, key file store) against
# baselines measured in the same run: `cat` of a small file and `true`.
#
#   bench/liberty_show.sh [RUNS]      (default 300 runs each; target: median < 5 ms)
#   BENCH_LIBERTY_BIN=path/to/liberty bench/liberty_show.sh    (skip the build)
#
# Uses hyperfine when installed, else a Python timing loop (posix_spawn + waitpid per run).
set -eu

runs=${1:-300}
repo=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}

if [ -n "${BENCH_LIBERTY_BIN:-}" ]; then
    bin=$BENCH_LIBERTY_BIN # a release binary built earlier: skip the build
else
    echo "building liberty (release)..." >&2
    (cd "$repo" && cargo build --release -p lockstock-cli --bin liberty >&2)
    bin="$target/release/liberty"
fi
[ -x "$bin" ] || { echo "no binary at $bin" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
export LIBERTY_HOME="$work/vault" LIBERTY_KEY_DIR="$work/keys" LIBERTY_KEY_STORE=file
unset LIBERTY_PASSPHRASE
"$bin" init >/dev/null
for name in OPENAI_API_KEY ANTHROPIC_API_KEY LOCKSTOCK_API_KEY LOCKSTOCK_GATEWAY_KEY GITHUB_TOKEN; do
    printf 'sk-%s-0123456789abcdef0123456789abcdef' "$name" | "$bin" add "$name" >/dev/null 2>&1
done
printf 'sk-small-file-0123456789abcdef\n' >"$work/small.txt"
true_bin=/bin/true; [ -x "$true_bin" ] || true_bin=/usr/bin/true
cat_bin=$(command -v cat)

echo "machine: $(nproc) cores, $(uname -sr); $runs runs each" >&2
if command -v hyperfine >/dev/null 2>&1; then
    hyperfine -N --warmup 20 --runs "$runs" \
        --export-json "$work/h.json" \
        "$bin show OPENAI_API_KEY" "$cat_bin $work/small.txt" "$true_bin" >&2
    python3 - "$work/h.json" <<'PY'
import json, statistics, sys
res = json.load(open(sys.argv[1]))["results"]
def stats(times):
    t = sorted(x * 1000 for x in times)
    return statistics.median(t), t[int(0.9 * (len(t) - 1))]
(lm, lp), (cm, cp), (tm, tp) = (stats(r["times"]) for r in res)
print(f"liberty show : median {lm:.2f} ms  p90 {lp:.2f} ms")
print(f"cat (file)   : median {cm:.2f} ms  p90 {cp:.2f} ms")
print(f"true         : median {tm:.2f} ms  p90 {tp:.2f} ms")
print(f"ratio liberty/cat median {lm/cm:.2f}x, liberty/true {lm/tm:.2f}x; target median < 5 ms: {'PASS' if lm < 5 else 'FAIL'}")
PY
else
    python3 - "$runs" "$bin" "$work/small.txt" "$true_bin" "$cat_bin" <<'PY'
import os, statistics, sys, time
runs, liberty, small, true_bin, cat_bin = int(sys.argv[1]), *sys.argv[2:]
cases = {
    "liberty show": [liberty, "show", "OPENAI_API_KEY"],
    "cat (file)": [cat_bin, small],
    "true": [true_bin],
}
devnull = os.open(os.devnull, os.O_WRONLY)
actions = [(os.POSIX_SPAWN_DUP2, devnull, 1), (os.POSIX_SPAWN_DUP2, devnull, 2)]
def once(argv):
    # posix_spawn + waitpid: far less overhead than subprocess.run, the same for every case.
    t0 = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions)
    _, status = os.waitpid(pid, 0)
    t = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{argv} failed with {status}")
    return t * 1000
times = {k: [] for k in cases}
for argv in cases.values():
    for _ in range(20):
        once(argv)
# Interleave the cases so drift (other load, CPU frequency) hits them alike.
for _ in range(runs):
    for name, argv in cases.items():
        times[name].append(once(argv))
res = {}
for name, t in times.items():
    t.sort()
    res[name] = (statistics.median(t), t[int(0.9 * (len(t) - 1))])
    print(f"{name:13}: median {res[name][0]:.2f} ms  p90 {res[name][1]:.2f} ms")
lm, cm, tm = res["liberty show"][0], res["cat (file)"][0], res["true"][0]
print(f"ratio liberty/cat median {lm/cm:.2f}x, liberty/true {lm/tm:.2f}x; "
      f"target median < 5 ms: {'PASS' if lm < 5 else 'FAIL'}")
PY
fi
