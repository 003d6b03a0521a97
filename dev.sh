#!/usr/bin/env bash
# One entry point for a fresh machine: creates (or reuses) the project's virtual environment in
# .venv, installs the package with the pinned constraints, then runs what was asked.
#
#   ./dev.sh demo     run the curation pipeline on the embedded sample (out/sample), print a summary
#                     (extra arguments go to the pipeline, see --help)
#   ./dev.sh test     run the whole test suite (slow tests included), then ruff
#                     (extra arguments go to pytest, e.g. ./dev.sh test -x tests/alp_curation)
#   ./dev.sh env      only create / refresh the environment
#
# Environment variables:
#   ALP_PYTHON        interpreter used to create .venv (default: python3)
#   ALP_VENV          where the environment lives (default: .venv beside this script)
#   ALP_CONSTRAINTS   constraints file (default: constraints.txt; see docs/install.md)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$root"
venv="${ALP_VENV:-$root/.venv}"
constraints="${ALP_CONSTRAINTS:-$root/constraints.txt}"
python="${ALP_PYTHON:-python3}"

ensure_env() {
    # The stamp records what the environment was built from; any change to the dependency
    # files rebuilds it, so a stale environment never hides a missing install step.
    local want have=""
    want="$(cat pyproject.toml "$constraints" | sha256sum | cut -d' ' -f1)"
    [ -f "$venv/.alp-stamp" ] && have="$(cat "$venv/.alp-stamp")"
    if [ "$want" != "$have" ] || [ ! -x "$venv/bin/python" ]; then
        echo "[dev.sh] setting up $venv (first run takes a few minutes)" >&2
        [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --upgrade "pip>=24"
        "$venv/bin/python" -m pip install --quiet -c "$constraints" -e ".[dev]"
        echo "$want" > "$venv/.alp-stamp"
    fi
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
    env)
        ensure_env ;;
    demo)
        ensure_env
        # The main job on the embedded sample, offline: the MiniLM encoder ships as a package.
        # The embedding cache makes a second demo run skip the embedding.
        exec "$venv/bin/beam" run pipelines/extract_alps.py \
            --input samples/synthetic/narratives.jsonl --output out/sample --overwrite \
            --text-encoder minilm --embedding-cache out/embedding-cache "$@" ;;
    test)
        ensure_env
        # Tests never reach the network: the model hubs are switched to offline mode.
        export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
        "$venv/bin/python" -m pytest --run-slow "$@"
        "$venv/bin/python" -m ruff check . ;;
    *)
        awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
        exit 2 ;;
esac
