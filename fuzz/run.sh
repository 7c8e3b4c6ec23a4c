#!/usr/bin/env bash
# Runs every fuzz target for FUZZ_SECONDS (default 60) each, one after another.
# Needs cargo-fuzz (`cargo install cargo-fuzz`). Without a nightly toolchain, the stable one
# is used with RUSTC_BOOTSTRAP=1. Set FUZZ_SANITIZER=none if AddressSanitizer fails to build.
# Usage: fuzz/run.sh [target…]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-60}"
sanitizer="${FUZZ_SANITIZER:-address}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(fastcgi_records message_xml safe_decrypt config_parse template_render gateway_json query_params)
fi
export RUSTC_BOOTSTRAP="${RUSTC_BOOTSTRAP:-1}"
for t in "${targets[@]}"; do
    echo "== $t for ${seconds}s (sanitizer: $sanitizer)"
    # Corpus: fuzz/corpus/$t (committed seed-* files plus whatever the run adds, git-ignored).
    # Crashes land in fuzz/artifacts/$t/.
    cargo fuzz run -s "$sanitizer" "$t" -- -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
