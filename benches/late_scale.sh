#!/usr/bin/env bash
# benches/late_scale.sh — memory and static-rule latency with 256 slow backend calls in flight
# (issue 13's scale goal: ≤ 16 MiB RSS in all, static-rule p99 ≤ 5 ms meanwhile), through nginx:
#
#     bash benches/late_scale.sh
#
# Builds the binary the README installs (`cargo release-static`) unless $WEIXIN_FCGI_BIN is set,
# then runs benches/late_scale.py twice: a forward rule without `late` (timeout_ms = 40000, the
# call outlives WeChat's attempts the old way) and one with late = "next_message". Each run:
# 256 messages from 256 users at once to a backend that answers after 30 s, then 20 s of paced
# static-rule requests (4 clients, one request every 5 ms each) while the calls are held, after a
# 5 s "before" run of the same static load as this machine's noise floor. Prints the figures;
# the LATE_SCALE lines are machine-readable. Loopback only; about 2 × 45 s. Needs nginx and
# python3 (tests/run.sh installs nginx).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${WEIXIN_FCGI_BIN:-}
if [[ -z $BIN ]]; then
    (cd "$ROOT" && cargo release-static)
    BIN=$ROOT/target/x86_64-unknown-linux-gnu/release/weixin-fcgi
fi
[[ -x /usr/sbin/nginx ]] || { echo "late_scale: nginx is needed (apt-get install nginx-light)" >&2; exit 1; }
echo "binary: $BIN ($(stat -c %s "$BIN") bytes); $(nproc) CPUs; load: $(cut -d' ' -f1-3 /proc/loadavg)"
for mode in off next_message; do
    /usr/bin/python3 "$ROOT/benches/late_scale.py" "$BIN" --mode "$mode" --calls 256 --delay 30 \
        --static-seconds 20
done
