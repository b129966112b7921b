#!/bin/sh
# Benchmark the admin tools: `lockstock-audit` decryption throughput (target >= 20 MB/s of
# transcripts) and `lockstock-audit verify` (target >= 50,000 stamps/s), against baselines
# measured in the same run (`cat` of the same plaintext; a fetch-only client of the same API).
#
#   bench/audit.sh [--exchanges N] [--request-bytes B] [--response-bytes B] [--chain-stamps N] [--runs N]
#
# Defaults: 2500 exchanges of 4 KiB requests + 16 KiB streamed answers (~51 MB), 200,000
# stamps without transcripts, median of 3 runs. See bench/audit.rs.
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
echo "building (release)..." >&2
cargo build --release -p lockstock-cli --bin lockstock-audit --example audit_bench >&2
target=${CARGO_TARGET_DIR:-$repo/target}
exec "$target/release/examples/audit_bench" "$@"
