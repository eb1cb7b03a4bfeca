"""Compression bombs built in about a second: 1 GiB of zeros deflated once per MiB-sized
block after a full flush, so every block after the first repeats the same bytes."""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from functools import cache

MiB = 1 << 20
GiB = 1 << 30


def _deflate_zeros(prefix: bytes, zeros: int, suffix: bytes = b"") -> tuple[bytes, int]:
    """Raw deflate of prefix + zeros + suffix, and its CRC-32."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    chunk = bytes(MiB)
    parts = [c.compress(prefix), c.flush(zlib.Z_FULL_FLUSH)]
    first = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
    second = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
    assert zeros % MiB == 0 and zeros >= 3 * MiB
    parts += [first, second]
    parts += [second] * (zeros // MiB - 2)  # the same state, the same bytes
    parts += [c.compress(suffix), c.flush()]
    crc = zlib.crc32(prefix)
    for _ in range(zeros // MiB):
        crc = zlib.crc32(chunk, crc)
    return b"".join(parts), zlib.crc32(suffix, crc)


@cache
def zip_bomb(expanded: int = GiB) -> bytes:
    """A zip of one file of ``expanded`` zeros (about 1 MiB for 1 GiB)."""
    data, crc = _deflate_zeros(b"", expanded)
    name = b"zeros.bin"
    local = struct.pack(
        "<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(data), expanded, len(name), 0
    )
    central = struct.pack(
        "<4s4B4HL2L5H2L",
        b"PK\x01\x02",
        20,
        3,
        20,
        0,
        0,
        8,
        0,
        0,
        crc,
        len(data),
        expanded,
        len(name),
        0,
        0,
        0,
        0,
        0o100644 << 16,
        0,
    )
    cd_offset = len(local) + len(name) + len(data)
    cd = central + name
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(cd), cd_offset, 0)
    return local + name + data + cd + end


@cache
def tar_gz_bomb(expanded: int = GiB) -> bytes:
    """A tar.gz of one file of ``expanded`` zeros (about 1 MiB for 1 GiB)."""
    info = tarfile.TarInfo("zeros.bin")
    info.size = expanded
    header = info.tobuf(format=tarfile.PAX_FORMAT)
    trailer = bytes(2 * tarfile.BLOCKSIZE)
    data, crc = _deflate_zeros(header, expanded, trailer)
    size = (len(header) + expanded + len(trailer)) & 0xFFFFFFFF
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + data + struct.pack("<2L", crc, size)


def many_entries_zip(entries: int, declared: int) -> bytes:
    """A zip whose central directory holds ``entries`` records (all naming one tiny member)
    while its end record claims ``declared`` (over 65535: a zip64 end record)."""
    name = b"a.txt"
    crc = zlib.crc32(b"x")
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, crc, 1, 1, len(name), 0)
    body = local + name + b"x"
    out = io.BytesIO()
    out.write(body)
    for i in range(entries):
        n = f"{i:07d}".encode()
        out.write(
            struct.pack(
                "<4s4B4HL2L5H2L",
                b"PK\x01\x02",
                20,
                3,
                20,
                0,
                0,
                0,
                0,
                0,
                crc,
                1,
                1,
                len(n),
                0,
                0,
                0,
                0,
                0o100644 << 16,
                0,
            )
            + n
        )
    cd_size = out.tell() - len(body)
    if declared > 0xFFFF:
        z64_at = out.tell()
        out.write(
            struct.pack(
                "<4sQ2H2L4Q",
                b"PK\x06\x06",
                44,
                45,
                45,
                0,
                0,
                declared,
                declared,
                cd_size,
                len(body),
            )
        )
        out.write(struct.pack("<4sLQL", b"PK\x06\x07", 0, z64_at, 1))
        out.write(
            struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
        )
    else:
        out.write(
            struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, declared, declared, cd_size, len(body), 0)
        )
    return out.getvalue()
