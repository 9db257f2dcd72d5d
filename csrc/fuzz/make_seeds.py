"""Write the seed corpus of the fuzz targets (csrc/fuzz/corpus/{encode,put,aggregate}/).

Run from anywhere: ``python csrc/fuzz/make_seeds.py``. The formats are documented at the top of
fuzz_encode.c, fuzz_put.c and fuzz_aggregate.c. ``seed-*`` files are starting points; ``regress-*`` files are inputs
that once crashed or broke an invariant (tests/test_fuzz_regressions.py replays them); crash
files found later by libFuzzer can be copied into the corpus directories as they are.
"""

from __future__ import annotations

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
REC = struct.Struct("=IBBHHHId")
SEG_DATA_MIN = 4 * (24 + 8 + 1024 + 8192)
T_PAD, T_F64, T_I64, T_STR, T_TRUE, T_FALSE = 1, 2, 3, 4, 5, 6


def record(
    rtype: int, key: bytes, num: bytes | None = None, s: bytes = b"", epoch: float = 1.7e9, bucket: int = 0
) -> bytes:
    """One ring record, padded to 8 bytes, as ring.c writes it."""
    body = 24 + (8 if num is not None else 0) + len(key) + len(s)
    size = (body + 7) & ~7
    out = REC.pack(size, rtype, 0, bucket, len(key), 0, len(s), epoch) + (num or b"") + key + s
    return out + bytes(size - len(out))


def pad(size: int) -> bytes:
    """A padding record of ``size`` bytes (to the end of the data area)."""
    return struct.pack("=IB3x", size, T_PAD) + bytes(size - 8)


def encode_seed(
    payload: bytes,
    frm: int = 0,
    delta: int | None = None,
    max_events: int = 1000,
    flags: int = 0,
    out_extra: int = 0,
    hostile: tuple = (0, 0, 0, 0, 0),
) -> bytes:
    """A fuzz_encode input: the 37-byte preamble, then the payload."""
    if delta is None:
        delta = len(payload)
    return struct.pack("<BQIHH", flags, frm, delta, max_events, out_extra) + struct.pack("<5I", *hostile) + payload


def put_op(op: int, aux: int = 0, keylen: int = 1, len2: int = 0, bits: int = 0, esel: int = 5, pos: int = 0) -> bytes:
    """A fuzz_put operation (20 bytes)."""
    return struct.pack("<BBHHQHI", op, aux, keylen, len2, bits, esel, pos)


def agg_op(op: int, aux: int = 0, esel: int = 64, bits: int = 0, pos: int = 0) -> bytes:
    """A fuzz_aggregate operation (16 bytes)."""
    return struct.pack("<BBHQI", op, aux, esel, bits, pos)


def f64_bits(v: float) -> int:
    return struct.unpack("=Q", struct.pack("=d", v))[0]


def aggregate_seeds() -> dict:
    """fuzz_aggregate inputs: the rules (window of mean and count over 1 s, deadband, on change,
    window of every statistic over 0.1 s), then operations."""
    rules = bytes([1, 0x21, 2, 0x35, 3, 0x10, 1, 0x7E])
    mixed = [agg_op(0, aux=k, esel=64 + 7 * i, bits=f64_bits(0.5 * i)) for i in range(12) for k in range(6)]
    mixed += [agg_op(1, aux=k, esel=64 + i, bits=(2**63 - 1 - i) % 2**64) for i in range(4) for k in (0, 3)]
    mixed += [agg_op(0, aux=0, esel=90, bits=2), agg_op(0, aux=0, esel=91, bits=2)]  # 1.5e308 twice
    mixed += [agg_op(2, aux=2, bits=1), agg_op(2, aux=2, bits=3), agg_op(2, aux=4, bits=0x200)]
    mixed += [agg_op(3, aux=0x85), agg_op(6, aux=200), agg_op(4), agg_op(7, aux=3), agg_op(3, aux=5), agg_op(5)]
    backfill = [agg_op(0, aux=0, esel=4 + 64 * i, bits=f64_bits(float(i % 7))) for i in range(300)]
    backfill += [agg_op(1, aux=0, esel=4 + 64 * (i * 37 % 300), bits=i) for i in range(100)]  # out of order
    backfill += [op for i in range(20) for op in (agg_op(3, aux=50), agg_op(6, aux=8), agg_op(4), agg_op(7, aux=9))]
    return {"mixed": rules + b"".join(mixed), "backfill": rules + b"".join(backfill)}


def main() -> None:
    enc = os.path.join(HERE, "corpus", "encode")
    put = os.path.join(HERE, "corpus", "put")
    agg = os.path.join(HERE, "corpus", "aggregate")
    os.makedirs(enc, exist_ok=True)
    os.makedirs(put, exist_ok=True)
    os.makedirs(agg, exist_ok=True)
    f64 = struct.pack("=d", 21.5)
    mixed = (
        record(T_F64, b"temp", f64)
        + record(T_I64, b"n", struct.pack("=q", -(2**63)))
        + record(T_STR, "h\u00e9".encode(), s=b'say "hi"\n\x01\xff\xed\xa0\x80')
        + record(T_TRUE, b"t")
        + record(T_FALSE, b"f", epoch=-1.0)
        + record(T_F64, b"nan", struct.pack("=d", float("nan")))
        + record(T_I64, b"other-bucket", struct.pack("=q", 7), bucket=3)
    )
    seeds = {
        "empty": encode_seed(b""),
        "mixed": encode_seed(mixed),
        "mixed-small-batches": encode_seed(mixed, max_events=2, flags=2 << 1),
        # the data area wraps: a pad to its end, then a record at offset 0
        "wrap": encode_seed(pad(48) + record(T_STR, b"k", s=b"x" * 100), frm=3 * SEG_DATA_MIN - 48),
        "corrupt-after-good": encode_seed(record(T_TRUE, b"a") + struct.pack("=IB3x", 999999, T_STR)),
        "max-string": encode_seed(record(T_STR, b"k" * 1024, s=b"\x1f" * 8192)),
        "head-beyond-segment": encode_seed(record(T_TRUE, b"a"), delta=SEG_DATA_MIN + 8),
        "unaligned-from": encode_seed(record(T_TRUE, b"a"), frm=4),
        "hostile-header-small": encode_seed(mixed, flags=1, hostile=(1, SEG_DATA_MIN, 1, 0, 60000)),
    }
    regress = {
        # nsegs * (320 + seg_data_size) wraps 2^64 so the header claims 6080 bytes; the segment
        # really lies past the end of an 8 KiB mapping: the encoder read out of bounds
        "hostile-layout-wraps": encode_seed(
            bytes(2368) + record(T_STR, b"k", s=b"x" * 4000),
            flags=1,
            delta=4096,
            hostile=(2**32 - 8, 2**32 - 312, 1, 0, 4096),
        ),
        # head just below 2^64: pos + size wrapped, a record past head was taken and end went
        # back to 8 (the sender would have moved the tail backwards)
        "head-near-2-64": encode_seed(
            record(T_TRUE, b"a") + record(T_TRUE, b"b" * 16), frm=2**64 - 64, delta=56, out_extra=60000
        ),
    }
    seeds.update({"regress-" + k: v for k, v in regress.items()})
    for name, data in seeds.items():
        name = name if name.startswith("regress-") else "seed-" + name
        with open(os.path.join(enc, name), "wb") as f:
            f.write(data)

    text = "k\u00e9y\U0001f600\xff".encode("utf-8", "surrogateescape") + bytes(range(256))
    ops = {
        "each-type": b"".join(
            [
                put_op(0, keylen=3, bits=struct.unpack("=Q", struct.pack("=d", 0.1))[0]),
                put_op(1, keylen=4, bits=2**63),
                put_op(2, aux=1, keylen=2, esel=0),
                put_op(2, aux=0, keylen=2, esel=1),
                put_op(3, keylen=5, len2=40, esel=3),
                put_op(6, aux=3, keylen=1),
                put_op(6, aux=0, keylen=1),
                put_op(5, keylen=1),
            ]
        )
        + text,
        "limits-and-wrap": b"".join(
            [put_op(7, keylen=1024, len2=8192, pos=3) for _ in range(6)]
            + [put_op(7, keylen=1025, len2=1), put_op(7, keylen=1, len2=8193), put_op(0, keylen=0)]
        )
        + text,
        "interned-keys": b"".join(
            [
                put_op(0, aux=0x80, keylen=3, bits=struct.unpack("=Q", struct.pack("=d", -0.0))[0]),
                put_op(1, aux=0xC0, keylen=4, bits=2**63 - 1),
                put_op(2, aux=0x81, keylen=2, esel=0),
                put_op(3, aux=0x80, keylen=5, len2=40),
                put_op(7, aux=0x80, keylen=1024, len2=8192),
                put_op(7, aux=0x80, keylen=1025, len2=1),
                put_op(6, aux=0x82, keylen=1),
            ]
        )
        + text,
        "buckets": b"".join(
            [
                put_op(4, aux=1),
                put_op(1, keylen=1, bits=5),
                put_op(4, aux=2),
                put_op(1, keylen=1, bits=6),
                put_op(5, keylen=1),
                put_op(4, aux=1),
                put_op(2, aux=1, keylen=1),
            ]
        )
        + text,
    }
    for name, data in ops.items():
        with open(os.path.join(put, "seed-" + name), "wb") as f:
            f.write(data)
    for name, data in aggregate_seeds().items():
        with open(os.path.join(agg, "seed-" + name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
