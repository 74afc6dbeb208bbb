#!/usr/bin/env bash
# Builds the release tool, examples and test binaries here and packs them (stripped, xz) into
# .devbin/ for a lent GPU machine that has no Rust toolchain (see tests/device/run.sh).
# Usage: bash tests/device/pack.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.devbin' .gitignore || echo '/.devbin' >>.gitignore
rm -rf .devbin && mkdir -p .devbin
cargo build --release --all-targets
list=$(cargo test --release --no-run --message-format=json 2>/dev/null | python3 -c '
import sys, json
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        k = m["target"]["kind"][0]
        print(("unit-" if k in ("lib", "bin") else "") + m["target"]["name"] + "-" + k, m["executable"])
')
pack() { # name path
    cp "$2" ".devbin/$1" && strip ".devbin/$1" && xz -T2 -6 ".devbin/$1"
}
pack deepml target/release/deepml
pack arcface_gflops target/release/examples/arcface_gflops
while read -r name path; do pack "$name" "$path"; done <<<"$list"
du -sh .devbin && ls .devbin
