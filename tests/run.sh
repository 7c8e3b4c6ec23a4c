#!/usr/bin/env bash
# The whole test suite, as README.md gives it and .ci/run calls it, on a fresh Debian/Ubuntu
# machine: installs the system packages the tests use (real nginx, cgi-fcgi from libfcgi-bin,
# systemd-socket-activate and systemd-analyze, Python's cryptography for independent safe-mode
# checks, prometheus_client to parse the OpenMetrics status page, redis-server for shared state),
# then runs format and lint checks, every unit and integration test (and, built with
# `--features redis`, the unit tests and the shared-state tests against a real redis-server),
# the unit-file / nginx-snippet checks, the Debian package in a booted Debian 12
# (tests/ops/systemd-e2e.sh: builds the .deb with cargo-deb, installs cargo-deb, debootstrap and
# systemd-nspawn when missing; measured here: the release build of the .deb about 1.5 minutes,
# 40-100 s in the container, and once per machine about 4 minutes more for `cargo install
# cargo-deb` and the debootstrap of the cached root), and the Redis drop-ins in a booted
# Debian 12 (tests/ops/shared-state-nspawn.sh: the package's binary, `--features tls,redis`,
# and about 1 minute, plus 2 the first time for its cached root).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v cgi-fcgi >/dev/null 2>&1 || need+=(libfcgi-bin)
command -v systemd-socket-activate >/dev/null 2>&1 || need+=(systemd)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v c++ >/dev/null 2>&1 || need+=(g++) # libfuzzer-sys, for the fuzz targets' check
/usr/bin/python3 -c 'import cryptography' >/dev/null 2>&1 || need+=(python3 python3-cryptography)
/usr/bin/python3 -c 'import prometheus_client' >/dev/null 2>&1 || need+=(python3-prometheus-client)
if [ ${#need[@]} -gt 0 ]; then
    echo "== installing: ${need[*]}"
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing packages (${need[*]}); run as root or install them with apt-get" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --quiet --workspace --all-targets -- -D warnings
echo "== cargo clippy --all-targets --features redis -- -D warnings"
cargo clippy --quiet --all-targets --features redis -- -D warnings
echo "== cargo check --manifest-path fuzz/Cargo.toml (the fuzz targets still build)"
cargo check --quiet --manifest-path fuzz/Cargo.toml --bins
echo "== cargo test"
cargo test --quiet --workspace --no-fail-fast
echo "== cargo test --features redis --lib --test shared_state"
cargo test --quiet --no-fail-fast --features redis --lib --test shared_state
echo "== unit files and nginx snippet"
cargo build --quiet
bash tests/ops/check-units.sh "$PWD/target/debug/weixin-fcgi"
echo "== Debian package on a real systemd (systemd-nspawn)"
bash tests/ops/systemd-e2e.sh
echo "== shared state from the hardened unit on a real systemd (systemd-nspawn)"
bash tests/ops/shared-state-nspawn.sh
