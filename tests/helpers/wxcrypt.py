#!/usr/bin/python3
"""WeChat safe-mode crypto (PROTOCOL.md section 5), written independently of the Rust code, so
tests/safe_mode.rs can check the responder against a second implementation.

Block: random(16) || len (4 bytes, big-endian) || msg || AppID, PKCS#7 to 32 bytes,
AES-256-CBC with key = b64decode(EncodingAESKey + "="), IV = key[:16], then base64.

  wxcrypt.py encrypt --key K --appid A [--defect D]   stdin: message  -> stdout: base64
  wxcrypt.py decrypt --key K --appid A                stdin: base64   -> stdout: message
  wxcrypt.py open-reply --token T --key K --appid A   stdin: reply envelope XML
      checks MsgSignature = sha1(sort([token, TimeStamp, Nonce, Encrypt])), then prints the
      decrypted reply XML. Exit status 1 (reason on stderr) on any mismatch.
  wxcrypt.py serve
      the same, one request per stdin line (so a test pays Python's start-up once):
      COMMAND TAB KEY TAB APPID TAB TOKEN TAB DEFECT TAB HEX(input)   (empty TOKEN/DEFECT: "-")
      answered by one line: "ok" TAB HEX(output), or "err" TAB reason.

Defects (each makes a ciphertext the responder must refuse; sign what you send):
  tamper-base64     characters outside the base64 alphabet
  truncate-base64   base64 text cut to a length that is not a multiple of 4
  truncate          the last 32 bytes (two AES blocks) of ciphertext removed
  not-multiple-16   5 extra bytes after the ciphertext
  bad-padding-zero  PKCS#7 pad bytes of value 0
  bad-padding-33    PKCS#7 pad bytes of value 33 (more than the block size 32)
  length-beyond     the length field says 1000 bytes more than the message has
  wrong-appid       another AppID after the message
  invalid-utf8      bytes 0xFF 0xFE inserted into the message
"""
import argparse
import base64
import hashlib
import os
import re
import struct
import sys

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

DEFECTS = [
    "tamper-base64",
    "truncate-base64",
    "truncate",
    "not-multiple-16",
    "bad-padding-zero",
    "bad-padding-33",
    "length-beyond",
    "wrong-appid",
    "invalid-utf8",
]


def aes_key(encoding_aes_key):
    key = base64.b64decode(encoding_aes_key + "=")
    if len(key) != 32:
        raise ValueError("EncodingAESKey does not decode to 32 bytes")
    return key


def cipher(key):
    return Cipher(algorithms.AES(key), modes.CBC(key[:16]))


def encrypt(key, appid, msg, defect=None):
    if defect == "invalid-utf8":
        msg = msg[: len(msg) // 2] + b"\xff\xfe" + msg[len(msg) // 2 :]
    length = len(msg) + (1000 if defect == "length-beyond" else 0)
    if defect == "wrong-appid":
        appid = "wx0000000000000bad"
    block = os.urandom(16) + struct.pack(">I", length) + msg + appid.encode()
    pad = 32 - len(block) % 32
    value = {"bad-padding-zero": 0, "bad-padding-33": 33}.get(defect, pad)
    block += bytes([value]) * pad
    enc = cipher(key).encryptor()
    ct = enc.update(block) + enc.finalize()
    if defect == "truncate":
        ct = ct[:-32]
    if defect == "not-multiple-16":
        ct += b"\x01\x02\x03\x04\x05"
    b64 = base64.b64encode(ct).decode()
    if defect == "tamper-base64":
        b64 = b64[:10] + "!*" + b64[12:]
    if defect == "truncate-base64":
        b64 = b64[:-3]
    return b64


def decrypt(key, appid, b64):
    ct = base64.b64decode(b64, validate=True)
    if len(ct) == 0 or len(ct) % 16:
        raise ValueError("ciphertext is not a non-empty multiple of 16 bytes")
    dec = cipher(key).decryptor()
    block = dec.update(ct) + dec.finalize()
    pad = block[-1]
    if not 1 <= pad <= 32 or block[-pad:] != bytes([pad]) * pad:
        raise ValueError("bad PKCS#7/32 padding")
    block = block[:-pad]
    (length,) = struct.unpack(">I", block[16:20])
    if 20 + length > len(block):
        raise ValueError("length field beyond the data")
    msg, got_appid = block[20 : 20 + length], block[20 + length :]
    if got_appid != appid.encode():
        raise ValueError("AppID mismatch: %r" % got_appid)
    return msg


def field(xml, name):
    m = re.search(r"<%s>(?:<!\[CDATA\[(.*?)\]\]>|([^<]*))</%s>" % (name, name), xml, re.S)
    if not m:
        raise ValueError("reply envelope has no <%s>" % name)
    return m.group(1) if m.group(1) is not None else m.group(2)


def open_reply(token, key, appid, envelope):
    enc, sig = field(envelope, "Encrypt"), field(envelope, "MsgSignature")
    ts, nonce = field(envelope, "TimeStamp"), field(envelope, "Nonce")
    expected = hashlib.sha1("".join(sorted([token, ts, nonce, enc])).encode()).hexdigest()
    if sig != expected:
        raise ValueError("MsgSignature %s != sha1(sort(token, ts, nonce, Encrypt)) %s" % (sig, expected))
    return decrypt(key, appid, enc)


def run(command, key, appid, token, defect, data):
    if command == "encrypt":
        return encrypt(key, appid, data, defect).encode()
    if command == "decrypt":
        return decrypt(key, appid, data.decode().strip())
    if command == "open-reply":
        return open_reply(token, key, appid, data.decode())
    raise ValueError("unknown command %r" % command)


def serve():
    for line in sys.stdin:
        try:
            command, key, appid, token, defect, data = line.rstrip("\n").split("\t")
            none = lambda v: None if v == "-" else v
            if none(defect) not in [None] + DEFECTS:
                raise ValueError("unknown defect %r" % defect)
            out = run(command, aes_key(key), appid, none(token), none(defect), bytes.fromhex(data))
            sys.stdout.write("ok\t%s\n" % out.hex())
        except (ValueError, UnicodeDecodeError) as e:
            sys.stdout.write("err\t%s\n" % str(e).replace("\n", " "))
        sys.stdout.flush()


def main():
    if sys.argv[1:] == ["serve"]:
        return serve()
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["encrypt", "decrypt", "open-reply"])
    p.add_argument("--key", required=True)
    p.add_argument("--appid", required=True)
    p.add_argument("--token")
    p.add_argument("--defect", choices=DEFECTS)
    a = p.parse_args()
    data = sys.stdin.buffer.read()
    key = aes_key(a.key)
    try:
        out = run(a.command, key, a.appid, a.token, a.defect, data)
    except ValueError as e:
        sys.stderr.write("wxcrypt: %s\n" % e)
        sys.exit(1)
    sys.stdout.buffer.write(out)


if __name__ == "__main__":
    main()
