#!/usr/bin/env bash
# Fuzz every target for a bounded time each (default 15 s), on a scratch copy of
# its seed corpus so the committed seeds stay as they are. Fails on any crash.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-15}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for target in fuzz_*.py; do
    name="${target#fuzz_}"; name="${name%.py}"
    mkdir -p "$scratch/$name"
    cp -r "corpus/$name/." "$scratch/$name/"
    if ! python3 "$target" -max_total_time="$seconds" -artifact_prefix="$scratch/" \
            "$scratch/$name" >"$scratch/$name.log" 2>&1; then
        echo "fuzz target $name crashed:"
        tail -n 40 "$scratch/$name.log"
        exit 1
    fi
    echo "fuzz $name: $(grep -E 'DONE' "$scratch/$name.log" | tail -n 1)"
done
