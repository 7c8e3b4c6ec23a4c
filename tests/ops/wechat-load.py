#!/usr/bin/env python3
"""wechat-load.py — curl config files of signed WeChat text-message POSTs, for systemd-e2e.sh.

  wechat-load.py PREFIX BATCHES SIZE TOKEN [URL]

Writes PREFIX.0.load … PREFIX.<BATCHES-1>.load, each with SIZE requests for `curl -K`, every one
with its own nonce and MsgId and a signature over (TOKEN, timestamp, nonce), as WeChat sends
them. curl resets the options at each "next", so every request carries all of its own; each
prints "STATUS BYTES" (write-out) when done."""
import hashlib
import os
import sys
import time

prefix, batches, size, token = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
url = sys.argv[5] if len(sys.argv) > 5 else "http://127.0.0.1/weixin"
ts = str(int(time.time()))
for b in range(batches):
    with open("%s.%d.load" % (prefix, b), "w") as f:
        for i in range(b * size, (b + 1) * size):
            nonce = "%d%07d" % (os.getpid(), i)
            sig = hashlib.sha1("".join(sorted([token, ts, nonce])).encode()).hexdigest()
            body = ("<xml><ToUserName><![CDATA[gh_e2e]]></ToUserName>"
                    "<FromUserName><![CDATA[o-load]]></FromUserName>"
                    "<CreateTime>%s</CreateTime><MsgType><![CDATA[text]]></MsgType>"
                    "<Content><![CDATA[load]]></Content><MsgId>%d</MsgId></xml>" % (ts, 7000000 + i))
            f.write('url = "%s?signature=%s&timestamp=%s&nonce=%s&openid=o-load"\n'
                    % (url, sig, ts, nonce))
            f.write('data-binary = "%s"\nheader = "Content-Type: text/xml"\nsilent\n' % body)
            f.write('output = "/dev/null"\nwrite-out = "%{http_code} %{size_download}\\n"\n')
            if i + 1 < (b + 1) * size:
                f.write("next\n")
