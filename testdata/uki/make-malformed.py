#!/usr/bin/env python3
"""Writes testdata/malformed/uki/: broken systemd stubs (stub-*) for
`uki build/measure --stub`, and broken UKIs (uki-*, parses-*) for
`uki show/measure`. Synthetic PE images, no real stub inside.

    python3 testdata/uki/make-malformed.py testdata/malformed/uki
"""
import os
import struct
import sys

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
MAGIC = b"#### LoaderInfo: systemd-stub 252.1 ####\0"


def pe(sections, soh=0x400, fa=0x200, sa=0x1000, security=(0, 0), nsect=None,
       symptr=0, nsym=0, trailing=b""):
    """sections: (name, data, vs or None, raw_offset or None)."""
    body = bytearray()
    hdrs = []
    off = soh
    va = 0x1000
    for name, data, vs, raw in sections:
        raw = off if raw is None else raw
        size = (len(data) + fa - 1) // fa * fa
        hdrs.append((name, len(data) if vs is None else vs, va, size, raw))
        if raw == off:
            body += data + b"\0" * (size - len(data))
            off += size
        va += ((len(data) if vs is None else vs) + sa - 1) // sa * sa or sa
    e = 0x40
    h = bytearray(soh)
    h[0:2] = b"MZ"
    struct.pack_into("<I", h, 0x3C, e)
    h[e:e + 4] = b"PE\0\0"
    n = len(hdrs) if nsect is None else nsect
    struct.pack_into("<HHIIIHH", h, e + 4, 0x8664, n, 0, symptr, nsym, 240, 0x22)
    o = e + 24
    struct.pack_into("<H", h, o, 0x20B)
    struct.pack_into("<II", h, o + 32, sa, fa)
    struct.pack_into("<II", h, o + 56, va & 0xFFFFFFFF, soh)
    struct.pack_into("<I", h, o + 108, 16)
    struct.pack_into("<II", h, o + 112 + 32, *security)
    t = o + 240
    for i, (name, vs, sva, size, raw) in enumerate(hdrs):
        if t + 40 * i + 40 > soh:
            break
        struct.pack_into("<8sIIII", h, t + 40 * i, name, vs, sva & 0xFFFFFFFF, size, raw)
        struct.pack_into("<I", h, t + 40 * i + 36, 0x40000040)
    return bytes(h) + bytes(body) + trailing


def w(name, data):
    open(os.path.join(out, name), "wb").write(data)


text = (b".text", b"\xc3" * 64, None, None)
sdm = (b".sdmagic", MAGIC, None, None)
# Stubs.
w("stub-no-sdmagic.efi", pe([text]))
w("stub-unknown-version.efi", pe([text, (b".sdmagic", b"#### LoaderInfo: systemd-stub 999.1 ####\0", None, None)]))
w("stub-sdmagic-not-text.efi", pe([text, (b".sdmagic", b"\xff\xfe systemd-stub \x80\x81", None, None)]))
w("stub-sdmagic-no-number.efi", pe([text, (b".sdmagic", b"systemd-stub vNEXT", None, None)]))
w("stub-truncated.efi", pe([text, sdm])[:0x90])
w("stub-section-past-eof.efi", pe([text, (b".sdmagic", MAGIC, None, 0x100000)]))
w("stub-no-header-room.efi", pe([text] * 15 + [sdm], soh=0x400))
w("stub-signed.efi", pe([text, sdm], security=(0x800, 0x10)))
w("stub-bad-file-alignment.efi", pe([text, sdm], fa=0x10))
w("stub-huge-symbol-table.efi", pe([text, sdm], symptr=0xFFFFFFF0, nsym=0xFFFFFFFF))
w("stub-huge-nsections.efi", pe([text, sdm], nsect=0xFFFF))
w("stub-zero-size.efi", b"")
# UKIs.
key = b"-----BEGIN PUBLIC KEY-----\nnot base64 !!\n-----END PUBLIC KEY-----\n"
w("uki-pcrsig-garbage.efi", pe([text, sdm, (b".pcrsig", b"\x00garbage{", None, None)]))
w("uki-pcrsig-bad-fields.efi", pe([text, sdm, (b".pcrsig", b'{"sha256":[{"pcrs":[1,2],"pkfp":"zz","pol":"12","sig":"@@"}]}', None, None)]))
w("uki-pcrsig-unknown-bank.efi", pe([text, sdm, (b".pcrsig", b'{"md5":[]}', None, None)]))
w("uki-pcrsig-no-pcrpkey.efi", pe([text, sdm, (b".pcrsig", b'{"sha256":[{"pcrs":[11],"pkfp":"00","pol":"' + b"00" * 32 + b'","sig":"AAAA"}]}', None, None)]))
w("uki-pcrpkey-garbage.efi", pe([text, sdm, (b".pcrpkey", key, None, None), (b".pcrsig", b'{"sha256":[]}', None, None)]))
w("uki-pcrsig-huge-virtual-size.efi", pe([text, sdm, (b".pcrsig", b"{}", 0xFFFFFF00, None)]))
w("uki-linux-huge-virtual-size.efi", pe([text, sdm, (b".linux", b"MZ", 0xFFFFF000, None)]))
w("uki-duplicate-linux.efi", pe([text, sdm, (b".linux", b"a", None, None), (b".linux", b"b", None, None)]))
w("uki-no-sdmagic.efi", pe([text, (b".linux", b"a", None, None)]))
w("uki-unknown-stub.efi", pe([text, (b".sdmagic", b"#### LoaderInfo: systemd-stub 999 ####", None, None), (b".linux", b"a", None, None)]))
