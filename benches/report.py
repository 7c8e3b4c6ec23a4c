#!/usr/bin/env python3
"""report.py — turn one run directory into RESULTS.md, results.json and results.svg.

  report.py RUN_DIR OUT_DIR

Reads RUN_DIR/meta.txt, rounds.csv and instructions.csv (written by run.sh). Ratios are taken per
round against the floor of the same round, then the median of those ratios is reported."""
import csv
import json
import os
import statistics
import sys

import chart

DESCRIPTIONS = {
    "nginx-return": "nginx `return 200 '<xml>…'`: the limit of the nginx path (verifies nothing)",
    "floor": "do-nothing C responder on libfcgi, 1 process (verifies nothing): the FastCGI floor",
    "weixin-fcgi-keepalive": "weixin-fcgi, `fastcgi_pass unix:` + `fastcgi_keep_conn on` + upstream `keepalive`",
    "weixin-fcgi": "weixin-fcgi, `fastcgi_pass unix:`, a new connection per request",
    "php-fpm": "PHP-FPM static pool of 2, sha1 signature + SimpleXML (callback.php)",
    "flask-wechatpy": "Flask + wechatpy under gunicorn, 2 sync workers, `proxy_pass`",
    "go-nethttp": "Go net/http + encoding/xml, standard library only, `proxy_pass`",
}
FIXED = {"nginx-return", "floor"}


def num(s, kind=float):
    return kind(s) if s not in (None, "") else None


def read_meta(path):
    meta = {}
    with open(path) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                meta[k] = v
    return meta


def summarize(rows):
    order = []
    for r in sorted(rows, key=lambda r: (int(r["round"]), int(r["order"]))):
        if r["target"] not in order:
            order.append(r["target"])
    if rows:  # present targets in round-1 order
        first = [r for r in rows if r["round"] == rows[0]["round"]]
        order = [r["target"] for r in sorted(first, key=lambda r: int(r["order"]))] + \
                [t for t in order if t not in {r["target"] for r in first}]
    floor = {r["round"]: num(r["rps"]) for r in rows if r["target"] == "floor" and r["status"] == "ok"}
    for r in rows:
        rps = num(r["rps"])
        f = floor.get(r["round"])
        r["ratio"] = round(rps / f, 3) if (r["status"] == "ok" and rps and f) else None
    out = []
    for t in order:
        mine = [r for r in rows if r["target"] == t]
        ok = [r for r in mine if r["status"] == "ok"]
        s = {"target": t, "fixed": t in FIXED, "description": DESCRIPTIONS.get(t, t),
             "rounds_ok": len(ok), "rounds": len(mine)}
        if not ok:
            s["reason"] = next((r["note"] or r["status"] for r in mine if r["status"] != "ok"), "no result")
            out.append(s)
            continue
        rps = [num(r["rps"]) for r in ok]
        ratios = [r["ratio"] for r in ok if r["ratio"] is not None]
        s.update({
            "rps_median": statistics.median(rps),
            "rps_mean": statistics.fmean(rps),
            "rps_min": min(rps),
            "rps_max": max(rps),
            "ratio_median": statistics.median(ratios) if ratios else None,
            "p50_us_median": statistics.median(num(r["p50_us"], int) for r in ok),
            "p99_us_median": statistics.median(num(r["p99_us"], int) for r in ok),
            "requests": sum(num(r["requests"], int) for r in ok),
            "non2xx": sum(num(r["err_status"], int) for r in ok),
            "socket_errors": sum(sum(num(r[k], int) for k in ("err_connect", "err_read", "err_write", "err_timeout"))
                                 for r in ok),
            "idle_kib_median": statistics.median(num(r["idle_kib"], int) for r in ok if r["idle_kib"]),
            "peak_kib_max": max((num(r["peak_kib"], int) for r in ok if r["peak_kib"]), default=None),
        })
        failed = [r for r in mine if r["status"] != "ok"]
        if failed:
            s["reason"] = f"{len(failed)} round(s) without result: " + (failed[0]["note"] or failed[0]["status"])
        out.append(s)
    return out


def ms(us):
    return f"{us / 1000:.2f}" if us is not None else "–"


def mib(kib):
    return f"{kib / 1024:.1f}" if kib else "–"


def md_round_table(rows, rnd):
    lines = ["| # | target | req/s | ratio to floor | p50 ms | p99 ms | non-2xx | socket errors | idle RSS MiB | peak RSS MiB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted((r for r in rows if r["round"] == rnd), key=lambda r: int(r["order"])):
        if r["status"] != "ok":
            lines.append(f"| {r['order']} | {r['target']} | {r['status']} | | | | | | | |")
            continue
        sock = sum(int(r[k]) for k in ("err_connect", "err_read", "err_write", "err_timeout"))
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "–"
        lines.append(f"| {r['order']} | {r['target']} | {float(r['rps']):,.0f} | {ratio} | {ms(int(r['p50_us']))} | "
                     f"{ms(int(r['p99_us']))} | {r['err_status']} | {sock} | {mib(num(r['idle_kib'], int))} | "
                     f"{mib(num(r['peak_kib'], int))} |")
    return lines


def main():
    run, out = sys.argv[1], sys.argv[2]
    meta = read_meta(os.path.join(run, "meta.txt"))
    with open(os.path.join(run, "rounds.csv")) as f:
        rows = list(csv.DictReader(f))
    with open(os.path.join(run, "instructions.csv")) as f:
        instr = list(csv.DictReader(f))
    summary = summarize(rows)
    data = {"meta": meta, "summary": summary, "rounds": rows, "instructions": instr}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
        f.write("\n")
    chart.render(data, os.path.join(out, "results.svg"))

    rounds = sorted({r["round"] for r in rows}, key=int)
    L = ["# weixin-fcgi benchmark results", "",
         "Generated by `bash benches/run.sh` — do not edit by hand; re-run to refresh. "
         "Raw logs of this run: `" + meta.get("rundir", "?") + "`.", "",
         f"- Date: {meta.get('date', '?')}",
         f"- Machine: {meta.get('nproc', '?')} CPUs, {meta.get('cpu', '?')}, {meta.get('mem', '?')} RAM; {meta.get('os', '?')}",
         f"- System load average (1/5/15 min) at start: {meta.get('loadavg_start', '?')}, at end: "
         f"{meta.get('loadavg_end', '?')} — this machine is shared and noisy; compare ratios within a round",
         f"- Load: {meta.get('settings', '?')}; every target behind its own nginx with the same settings, "
         "127.0.0.1 only; one signed WeChat text message POSTed (benches/post.lua)",
         "- Versions: " + ", ".join(f"{k} {meta[k]}" for k in
                                    ("nginx", "wrk", "libfcgi", "php-fpm", "python", "flask", "gunicorn", "wechatpy", "go", "valgrind")
                                    if k in meta),
         f"- weixin-fcgi: {meta.get('weixin-fcgi', '?')}; nginx config: {meta.get('weixin-nginx', '?')}",
         "", "![requests/s and peak RSS per target](results.svg)", "",
         "## Summary (median over rounds)", "",
         "Ratio = the target's req/s divided by the do-nothing libfcgi floor's req/s in the same round "
         "(median of the per-round ratios). RSS = sum of VmRSS over all processes of the app side "
         "(for nginx-return: nginx itself); idle = before load (median), peak = during warm-up + load "
         "(largest over rounds). Errors are summed over rounds.", "",
         "| target | req/s (median) | min–max | ratio to floor | p50 ms | p99 ms | errors (non-2xx + socket) | idle RSS MiB | peak RSS MiB | what |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for s in summary:
        if not s["rounds_ok"]:
            L.append(f"| {s['target']} | {s.get('reason', 'no result')} | | | | | | | | {s['description']} |")
            continue
        ratio = f"{s['ratio_median']:.2f}" if s.get("ratio_median") is not None else "–"
        L.append(f"| {s['target']} | {s['rps_median']:,.0f} | {s['rps_min']:,.0f}–{s['rps_max']:,.0f} | {ratio} | "
                 f"{ms(s['p50_us_median'])} | {ms(s['p99_us_median'])} | {s['non2xx'] + s['socket_errors']} of {s['requests']:,} | "
                 f"{mib(s['idle_kib_median'])} | {mib(s['peak_kib_max'])} | {s['description']} |")
    notes = [s for s in summary if s["rounds_ok"] and s.get("reason")]
    for s in notes:
        L.append(f"\nNote — {s['target']}: {s['reason']}")
    L += ["", "## Instructions per request (callgrind, FastCGI without nginx)", "",
          "The responder runs under `valgrind --tool=callgrind`; `cgi-fcgi -bind -connect` sends the requests "
          "(with the params nginx's fastcgi_params would send) one connection each; counters are dumped after N1 "
          f"and after N2 requests ({meta.get('callgrind', '')}); instructions/request = (Ir(N2) − Ir(N1)) / (N2 − N1), "
          "so start-up cost cancels. Independent of machine noise.", "",
          "| responder | message | Ir(N1) | Ir(N2) | instructions/request | correct replies | note |",
          "|---|---|---:|---:|---:|---:|---|"]
    kinds = {"floor": "any (does nothing)", "weixin-fcgi": "plaintext text", "weixin-fcgi-safe": "safe mode (AES) text"}
    for i in instr:
        per = f"{int(i['per_request']):,}" if i["per_request"] else "–"
        ir1 = f"{int(i['ir_n1']):,}" if i["ir_n1"] else "–"
        ir2 = f"{int(i['ir_n2']):,}" if i["ir_n2"] else "–"
        ok = f"{i['ok']} of {i['n2']}" if i["ok"] else "–"
        L.append(f"| {i['label']} | {kinds.get(i['label'], '')} | {ir1} | {ir2} | {per} | {ok} | {i['note']} |")
    L += ["", "## Per round", ""]
    for rnd in rounds:
        L += [f"### Round {rnd}", "", *md_round_table(rows, rnd), ""]
    L += ["## Targets", ""]
    L += [f"- **{s['target']}** — {s['description']}" for s in summary]
    L += ["", "Every real target was checked before it was loaded: a signed POST with fresh random Content had to "
          "come back echoed, and the same POST with a wrong signature had to be refused (non-200). Sources: "
          "`benches/alt/` (floor.c, callback.php, flask_app.py, main.go).", ""]
    with open(os.path.join(out, "RESULTS.md"), "w") as f:
        f.write("\n".join(L))


if __name__ == "__main__":
    main()
