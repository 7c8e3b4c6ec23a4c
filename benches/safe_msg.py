#!/usr/bin/env python3
"""safe_msg.py — build a WeChat safe-mode (AES) request body, with the openssl CLI for AES.

  safe_msg.py TOKEN AES_KEY APP_ID TIMESTAMP NONCE PLAINTEXT_FILE OUT_BODY_FILE
  prints msg_signature; writes <xml><ToUserName/><Encrypt/></xml> to OUT_BODY_FILE.

Block layout (PROTOCOL.md §5): random(16) ‖ len(msg) u32 big-endian ‖ msg ‖ AppID, PKCS#7 padded
to a multiple of 32, AES-256-CBC with key = base64(AES_KEY + "="), IV = key[:16], then base64.
msg_signature = sha1(sort([token, timestamp, nonce, Encrypt]))."""
import base64
import hashlib
import os
import re
import subprocess
import sys


def main():
    if len(sys.argv) != 8:
        sys.exit(__doc__)
    token, aes_key, app_id, ts, nonce, plain_path, out_path = sys.argv[1:]
    key = base64.b64decode(aes_key + "=")
    assert len(key) == 32, "EncodingAESKey must decode to 32 bytes"
    msg = open(plain_path, "rb").read()
    block = os.urandom(16) + len(msg).to_bytes(4, "big") + msg + app_id.encode()
    pad = 32 - len(block) % 32
    block += bytes([pad]) * pad
    ct = subprocess.run(
        ["openssl", "enc", "-aes-256-cbc", "-nopad", "-nosalt", "-K", key.hex(), "-iv", key[:16].hex()],
        input=block, stdout=subprocess.PIPE, check=True, timeout=30,
    ).stdout
    enc = base64.b64encode(ct).decode()
    to_user = re.search(rb"<ToUserName><!\[CDATA\[(.*?)\]\]></ToUserName>", msg)
    to_user = to_user.group(1).decode() if to_user else "gh_bench"
    with open(out_path, "w") as f:
        f.write(f"<xml><ToUserName><![CDATA[{to_user}]]></ToUserName><Encrypt><![CDATA[{enc}]]></Encrypt></xml>")
    print(hashlib.sha1("".join(sorted([token, ts, nonce, enc])).encode()).hexdigest())


if __name__ == "__main__":
    main()
