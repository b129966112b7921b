#!/bin/sh
# Runs every test of the workspace: unit tests, the real binaries, the end-to-end suites with
# the real OpenAI and Anthropic Python SDKs, and (when a Docker engine answers) the container
# tests. The SDKs go into ./.venv the first time (from PyPI); nothing else is downloaded.
#
#   tests/run.sh                 everything
#   tests/run.sh -p liberty-vault   extra arguments go to `cargo test`
set -eu
cd "$(dirname "$0")/.."

if ! [ -x .venv/bin/python ] || ! .venv/bin/python -c 'import openai, anthropic, prometheus_client' 2>/dev/null; then
    echo "tests/run.sh: installing the Python SDK clients into .venv" >&2
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
fi
export LOCKSTOCK_PYTHON="$PWD/.venv/bin/python"

if [ "$#" -eq 0 ]; then
    set -- --workspace
fi
exec cargo test "$@"
