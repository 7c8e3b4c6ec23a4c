#!/usr/bin/env python3
"""rss.py — total RSS of a process tree, sampled.

  rss.py once ROOT_PID [ROOT_PID...]        print the current total VmRSS (KiB) of the trees
  rss.py sample OUT ROOT_PID [ROOT_PID...]  every 0.1 s until SIGTERM/SIGINT; on exit write
                                            "peak_kib samples" to OUT

A tree is the root and all its descendants (php-fpm master + children, gunicorn master +
workers, ...), re-discovered at every sample so that respawned workers are counted."""
import os
import signal
import sys
import time


def children_map():
    kids = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ... — comm may contain spaces and parentheses
        rest = stat[stat.rindex(b")") + 2:].split()
        kids.setdefault(int(rest[1]), []).append(int(name))
    return kids


def tree(roots):
    kids = children_map()
    seen, todo = set(), list(roots)
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        todo.extend(kids.get(p, []))
    return seen


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0  # gone, or a kernel thread / zombie without VmRSS


def total(roots):
    return sum(rss_kib(p) for p in tree(roots))


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "once":
        print(total([int(a) for a in sys.argv[2:]]))
        return
    if len(sys.argv) >= 4 and sys.argv[1] == "sample":
        out, roots = sys.argv[2], [int(a) for a in sys.argv[3:]]
        state = {"peak": 0, "n": 0, "stop": False}

        def stop(*_):
            state["stop"] = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        deadline = time.monotonic() + 3600  # bounded even if nobody stops us
        while not state["stop"] and time.monotonic() < deadline:
            state["peak"] = max(state["peak"], total(roots))
            state["n"] += 1
            time.sleep(0.1)
        with open(out, "w") as f:
            f.write(f"{state['peak']} {state['n']}\n")
        return
    sys.exit(__doc__)


if __name__ == "__main__":
    main()
