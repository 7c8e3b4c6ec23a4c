#!/usr/bin/env bash
# The whole test suite, as README.md gives it and .ci/run calls it, on a fresh Debian/Ubuntu
# machine: installs the system packages the tests use (real nginx, cgi-fcgi from libfcgi-bin,
# systemd-socket-activate and systemd-analyze, Python's cryptography for independent safe-mode
# checks), then runs format and lint checks, every unit and integration test, and the
# unit-file / nginx-snippet checks.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v cgi-fcgi >/dev/null 2>&1 || need+=(libfcgi-bin)
command -v systemd-socket-activate >/dev/null 2>&1 || need+=(systemd)
command -v curl >/dev/null 2>&1 || need+=(curl)
/usr/bin/python3 -c 'import cryptography' >/dev/null 2>&1 || need+=(python3 python3-cryptography)
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
echo "== cargo test"
cargo test --quiet --workspace --no-fail-fast
echo "== unit files and nginx snippet"
cargo build --quiet
bash tests/ops/check-units.sh "$PWD/target/debug/weixin-fcgi"
