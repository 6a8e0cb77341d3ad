#!/usr/bin/env python3
"""Open a coffer sealed file without coffer: an emergency reader written from
docs/FORMAT.md alone. Needs Python 3.8+ and the `cryptography` package
(Debian: python3-cryptography; pip: cryptography). For age stanzas it runs the
`age` command-line tool.

    open-coffer.py inspect FILE
    open-coffer.py open -i KEY [-i KEY...] [-o OUT] FILE
    open-coffer.py open --data-key DATAKEY.bin [-o OUT] FILE
    open-coffer.py stanza N FILE > stanza.bin      # then: openssl pkeyutl -decrypt ...

Exit codes follow coffer's: 3 integrity failure, 4 wrong or missing key, 2 usage.
"""

import argparse
import hashlib
import hmac
import json
import math
import os
import struct
import subprocess
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.exceptions import InvalidTag

MAGIC = b"COFFER"
VERSION = 1
MAX_BODY = 1 << 20
TAG = 16
RSA_KIND = "rsa-oaep-sha256"
AGE_KIND = "age"
MAX_RSA_STANZAS = 16
MAX_JSON_DEPTH = 127
OPTIONAL_MEMBERS = ("job", "compression", "content")


class Fail(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def integrity(msg):
    return Fail(3, msg)


class Header:
    pass


def reject_constant(name):
    raise ValueError("%s is not JSON" % name)


def finite(text):
    # FORMAT.md 1.2: a number beyond the double range is refused, as coffer does.
    if math.isinf(float(text)):
        raise ValueError("number %s... is out of range" % text[:20])
    return text


def check_json(value, depth=1):
    """The rules of FORMAT.md 1.2 that json.loads does not apply itself."""
    if depth > MAX_JSON_DEPTH:
        raise ValueError("nested deeper than %d levels" % MAX_JSON_DEPTH)
    if isinstance(value, str):
        if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
            raise ValueError("a string holds an unpaired surrogate")
    elif isinstance(value, dict):
        for k, v in value.items():
            check_json(k, depth)
            check_json(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            check_json(v, depth + 1)


def parse_metadata(raw):
    try:
        meta = json.loads(
            raw.decode("utf-8"),
            parse_constant=reject_constant,
            parse_float=lambda t: float(finite(t)),
            parse_int=lambda t: int(finite(t)),
        )
        check_json(meta)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise integrity("header is malformed: metadata: %s" % e)
    if not isinstance(meta, dict):
        raise integrity("header is malformed: metadata is not an object")
    if not isinstance(meta.get("created"), str):
        raise integrity('header is malformed: metadata lacks the required string member "created"')
    for name in OPTIONAL_MEMBERS:
        if not isinstance(meta.get(name), (str, type(None))):
            raise integrity('header is malformed: metadata member "%s" is not a string' % name)
    return meta


def read_exact(f, n):
    data = f.read(n)
    return data if data is not None else b""


def parse_header(f):
    prefix = read_exact(f, 12)
    if prefix[: min(len(prefix), 6)] != MAGIC[: min(len(prefix), 6)]:
        raise integrity("not a coffer file (bad magic)")
    if len(prefix) < 12:
        raise integrity("header is truncated")
    version, body_len = struct.unpack(">HI", prefix[6:12])
    if version == 0:
        raise integrity("invalid format version 0: the header is damaged")
    if version != VERSION:
        raise integrity("unsupported format version %d" % version)
    if body_len > MAX_BODY:
        raise integrity("header length %d is too large" % body_len)
    rest = read_exact(f, body_len + 32)
    if len(rest) != body_len + 32:
        raise integrity("header is truncated")
    body, mac = rest[:body_len], rest[body_len:]
    pos = 0

    def take(n, what):
        nonlocal pos
        if pos + n > len(body):
            raise integrity("header is malformed: %s runs past the end" % what)
        out = body[pos : pos + n]
        pos += n
        return out

    h = Header()
    (h.chunk_size,) = struct.unpack(">I", take(4, "chunk size"))
    if not 64 <= h.chunk_size <= 16 * 1024 * 1024:
        raise integrity("header is malformed: chunk size %d" % h.chunk_size)
    h.salt = take(32, "salt")
    (meta_len,) = struct.unpack(">I", take(4, "metadata length"))
    h.metadata = parse_metadata(take(meta_len, "metadata"))
    (count,) = struct.unpack(">H", take(2, "stanza count"))
    if not 1 <= count <= 1024:
        raise integrity("header is malformed: %d stanzas" % count)
    h.stanzas = []
    for index in range(count):
        (kind_len,) = take(1, "stanza kind length")
        kind = take(kind_len, "stanza kind")
        # Printable ASCII without the space; anything else spoils the header.
        if not kind or not all(0x21 <= b <= 0x7E for b in kind):
            raise integrity("header is malformed: stanza %d has an invalid kind" % index)
        kind = kind.decode("ascii")
        fingerprint = take(32, "fingerprint")
        (blen,) = struct.unpack(">I", take(4, "stanza body length"))
        h.stanzas.append((kind, fingerprint, take(blen, "stanza body")))
    if pos != len(body):
        raise integrity("header is malformed: trailing bytes in the header body")
    # The reader's rules of FORMAT.md 2.3, checked before any key is used.
    rsa_count = sum(1 for kind, _, _ in h.stanzas if kind == RSA_KIND)
    if rsa_count > MAX_RSA_STANZAS:
        raise integrity(
            "header is malformed: %d %s stanzas; at most %d" % (rsa_count, RSA_KIND, MAX_RSA_STANZAS)
        )
    seen = set()
    for kind, fingerprint, _ in h.stanzas:
        if (kind, fingerprint) in seen:
            raise integrity("header is malformed: two stanzas for %s SHA256:%s" % (kind, fingerprint.hex()))
        seen.add((kind, fingerprint))
    h.raw = prefix + body
    h.mac = mac
    h.size = len(prefix) + len(rest)
    return h


def hkdf(data_key, salt, info):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(data_key)


def check_mac(h, data_key):
    header_key = hkdf(data_key, h.salt, b"coffer/v1/header")
    expected = hmac.new(header_key, h.raw, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, h.mac):
        raise integrity("header authentication failed: the header was modified")


def load_rsa(path):
    with open(path, "rb") as f:
        data = f.read()
    if b"ENCRYPTED PRIVATE KEY" in data:
        pw_file = os.environ.get("COFFER_PASSPHRASE_FILE")
        if pw_file:
            with open(pw_file, "rb") as pf:
                password = pf.read().split(b"\n")[0].rstrip(b"\r")
        else:
            import getpass

            password = getpass.getpass("passphrase for %s: " % path).encode()
    else:
        password = None
    key = serialization.load_pem_private_key(data, password=password)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise Fail(2, "%s: not an RSA private key" % path)
    return key


def rsa_fingerprint(key):
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def unwrap(h, identities):
    """Returns the data key. RSA stanzas by fingerprint, age stanzas via `age -d`."""
    for path in identities:
        with open(path, "rb") as f:
            head = f.read()
        if b"-----BEGIN" in head and b"PRIVATE KEY-----" in head and b"OPENSSH" not in head:
            key = load_rsa(path)
            fp = rsa_fingerprint(key)
            for kind, sfp, body in h.stanzas:
                if kind == RSA_KIND and hmac.compare_digest(sfp, fp):
                    try:
                        data_key = key.decrypt(body, OAEP)
                    except ValueError:
                        raise integrity("the RSA stanza for this key is damaged")
                    if len(data_key) != 32:
                        raise integrity("the RSA stanza holds a key of the wrong size")
                    return data_key
        else:
            for kind, _, body in h.stanzas:
                if kind != AGE_KIND:
                    continue
                try:
                    out = subprocess.run(
                        ["age", "-d", "-i", path], input=body, capture_output=True, check=False
                    )
                except FileNotFoundError:
                    raise Fail(2, "age stanzas need the `age` tool on PATH")
                if out.returncode == 0 and len(out.stdout) == 32:
                    return out.stdout
    for index, (kind, _, _) in enumerate(h.stanzas):
        if kind not in (RSA_KIND, AGE_KIND):
            raise integrity(
                "no identity given can open this file, and stanza %d has the unknown kind %r: "
                "the header looks damaged or tampered with" % (index, kind)
            )
    wanted = ", ".join("%s SHA256:%s" % (k, fp.hex()) for k, fp, _ in h.stanzas)
    raise Fail(4, "no identity given can open this file; it was sealed to: " + wanted)


def decrypt_payload(f, payload_key, chunk_size, offset, out):
    aead = AESGCM(payload_key)
    full = chunk_size + TAG
    buf = read_exact(f, full + 1)
    index = 0
    while True:
        if len(buf) < TAG:
            raise integrity("truncated: the stream ends without a final chunk (chunk %d)" % index)
        last = len(buf) <= full
        chunk, buf = buf[:full], buf[full:]
        nonce = index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")
        try:
            plain = aead.decrypt(nonce, chunk, b"")
        except InvalidTag:
            where = "chunk %d (byte offset %d)" % (index, offset + index * full)
            other = index.to_bytes(11, "big") + (b"\x00" if last else b"\x01")
            try:
                aead.decrypt(other, chunk, b"")
            except InvalidTag:
                raise integrity(where + " failed authentication")
            raise integrity(("truncated after " if last else "trailing data after final ") + where)
        if last and not plain and index > 0:
            raise integrity("empty final chunk %d" % index)
        out.write(plain)
        if last:
            return
        index += 1
        buf += read_exact(f, full + 1 - len(buf))


def cmd_inspect(args):
    with open(args.file, "rb") as f:
        h = parse_header(f)
    print(json.dumps({
        "chunk_size": h.chunk_size,
        "header_bytes": h.size,
        "metadata": h.metadata,
        "recipients": [{"kind": k, "fingerprint": "SHA256:" + fp.hex()} for k, fp, _ in h.stanzas],
    }, indent=2))


def cmd_stanza(args):
    with open(args.file, "rb") as f:
        h = parse_header(f)
    if not 0 <= args.index < len(h.stanzas):
        raise Fail(2, "the file has %d stanzas" % len(h.stanzas))
    sys.stdout.buffer.write(h.stanzas[args.index][2])


def cmd_open(args):
    src = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")
    with src as f:
        h = parse_header(f)
        if args.data_key:
            with open(args.data_key, "rb") as kf:
                data_key = kf.read()
            if len(data_key) != 32:
                raise Fail(4, "a data key is 32 bytes; %s has %d" % (args.data_key, len(data_key)))
        elif args.identity:
            data_key = unwrap(h, args.identity)
        else:
            raise Fail(2, "give -i KEY or --data-key FILE")
        check_mac(h, data_key)
        payload_key = hkdf(data_key, h.salt, b"coffer/v1/payload")
        if args.output:
            tmp = args.output + ".partial"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb") as out:
                    decrypt_payload(f, payload_key, h.chunk_size, h.size, out)
                    out.flush()
                    os.fsync(out.fileno())
                os.link(tmp, args.output)
            finally:
                os.unlink(tmp)
        else:
            decrypt_payload(f, payload_key, h.chunk_size, h.size, sys.stdout.buffer)
            sys.stdout.buffer.flush()


def main():
    p = argparse.ArgumentParser(description="Open a coffer sealed file (format v1) without coffer.")
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("inspect", help="print the header as JSON")
    i.add_argument("file")
    s = sub.add_parser("stanza", help="write stanza N's wrapped key to stdout")
    s.add_argument("index", type=int)
    s.add_argument("file")
    o = sub.add_parser("open", help="decrypt to stdout or -o OUT")
    o.add_argument("-i", "--identity", action="append", help="RSA private key PEM, or an age identity file")
    o.add_argument("--data-key", help="a file holding the 32-byte data key (e.g. from openssl pkeyutl)")
    o.add_argument("-o", "--output", help="write here (never over an existing file)")
    o.add_argument("file")
    args = p.parse_args()
    try:
        {"inspect": cmd_inspect, "stanza": cmd_stanza, "open": cmd_open}[args.cmd](args)
    except Fail as e:
        print("open-coffer: error: %s: %s" % (args.file, e), file=sys.stderr)
        sys.exit(e.code)
    except OSError as e:
        print("open-coffer: error: %s" % e, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
