#!/usr/bin/python3
"""Independent safe-mode check for tests/cli_send.rs (PROTOCOL.md §5), written from the spec.

Usage: cli_decrypt.py TOKEN ENCODING_AES_KEY APPID [TIMESTAMP NONCE MSG_SIGNATURE] < envelope.xml

Reads an envelope with <Encrypt> on stdin. The signature inputs come from the envelope itself
(<TimeStamp>, <Nonce>, <MsgSignature>: a reply) or from the arguments (a request's query).
Verifies sha1(sort([token, timestamp, nonce, encrypt])), decrypts AES-256-CBC with IV = key[:16],
strips PKCS#7 (block 32), random(16), the big-endian length and the AppID (checked), and prints
the inner XML. Exits 1 with a message on any mismatch.
"""
import base64
import hashlib
import re
import sys

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def field(xml, name):
    m = re.search(r"<%s>(?:<!\[CDATA\[(.*?)\]\]>|([^<]*))</%s>" % (name, name), xml, re.S)
    if not m:
        return None
    return m.group(1) if m.group(1) is not None else m.group(2)


def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


def main():
    token, aes_key, appid = sys.argv[1:4]
    xml = sys.stdin.read()
    encrypt = field(xml, "Encrypt")
    if encrypt is None:
        fail("no <Encrypt>")
    if len(sys.argv) >= 7:
        timestamp, nonce, signature = sys.argv[4:7]
    else:
        timestamp, nonce, signature = (field(xml, n) for n in ("TimeStamp", "Nonce", "MsgSignature"))
    expected = hashlib.sha1("".join(sorted([token, timestamp, nonce, encrypt])).encode()).hexdigest()
    if expected != signature:
        fail("signature mismatch: expected %s, got %s" % (expected, signature))
    key = base64.b64decode(aes_key + "=")
    if len(key) != 32:
        fail("key is not 32 bytes")
    data = base64.b64decode(encrypt)
    dec = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    plain = dec.update(data) + dec.finalize()
    pad = plain[-1]
    if not 1 <= pad <= 32 or plain[-pad:] != bytes([pad]) * pad:
        fail("bad PKCS#7 padding")
    plain = plain[:-pad]
    length = int.from_bytes(plain[16:20], "big")
    msg, tail = plain[20:20 + length], plain[20 + length:]
    if tail.decode() != appid:
        fail("AppID mismatch: %r" % tail)
    sys.stdout.write(msg.decode("utf-8"))


if __name__ == "__main__":
    main()
