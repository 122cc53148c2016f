#!/usr/bin/env bash
# Fuzz every target for a bounded time each (default 15 s), on a scratch copy of
# its seed corpus so the committed seeds stay as they are, with its dictionary
# (dicts/<name>.dict) if it has one. Fails on any crash, and on any single input
# that takes longer than 20 s (a hang). Prints one summary line per target.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-15}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for target in fuzz_*.py; do
    name="${target#fuzz_}"; name="${name%.py}"
    mkdir -p "$scratch/$name"
    cp -r "corpus/$name/." "$scratch/$name/"
    extra=()
    if [[ -f "dicts/$name.dict" ]]; then extra+=("-dict=dicts/$name.dict"); fi
    if ! python3 "$target" -max_total_time="$seconds" -timeout=20 -artifact_prefix="$scratch/" \
            "${extra[@]}" "$scratch/$name" >"$scratch/$name.log" 2>&1; then
        echo "fuzz target $name crashed:"
        tail -n 40 "$scratch/$name.log"
        exit 1
    fi
    echo "fuzz $name: $(grep -E 'DONE' "$scratch/$name.log" | tail -n 1)"
done
