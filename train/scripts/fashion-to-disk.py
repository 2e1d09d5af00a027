#!/usr/bin/env python3
"""Writes Fashion-MNIST as a provider would keep its own data: a folder of
PNG images (train/ and test/, one sub-folder per class) and a NumPy .npz
archive (x_train, y_train, x_test, y_test; Keras's layout). Standard library
only (no NumPy): the examples in docs/data.md run on a bare Debian.

    python3 train/scripts/fashion-to-disk.py --train 10000 --test 2000 \
        --folder /tmp/fashion-png --npz /tmp/fashion.npz
"""

import argparse
import gzip
import os
import struct
import zipfile
import zlib

CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle-boot"]


def idx(path, dims):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack(">I", data[:4])[0]
    assert magic == 0x0800 | dims, f"{path}: bad magic {magic:#x}"
    shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
    return shape, data[4 + 4 * dims:]


def png(path, w, h, pixels):
    def chunk(kind, body):
        c = struct.pack(">I", len(body)) + kind + body
        return c + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    rows = b"".join(b"\x00" + pixels[y * w:(y + 1) * w] for y in range(h))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(rows, 6)))
        f.write(chunk(b"IEND", b""))


def npy(descr, shape, data):
    dims = ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "")
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': ({dims}), }}"
    header += " " * (-(10 + len(header) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + data


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--train", type=int, default=10000, help="training images written")
    ap.add_argument("--test", type=int, default=2000, help="test images written")
    ap.add_argument("--folder", help="write a PNG folder here")
    ap.add_argument("--npz", help="write a .npz archive here")
    a = ap.parse_args()
    splits = {}
    for name, prefix, n in [("train", "train", a.train), ("test", "t10k", a.test)]:
        (count, h, w), px = idx(os.path.join(a.source, f"{prefix}-images-idx3-ubyte.gz"), 3)
        (_,), lab = idx(os.path.join(a.source, f"{prefix}-labels-idx1-ubyte.gz"), 1)
        n = min(n, count)
        splits[name] = (n, h, w, px[:n * h * w], lab[:n])
    if a.folder:
        for name, (n, h, w, px, lab) in splits.items():
            for c in CLASSES:
                os.makedirs(os.path.join(a.folder, name, c), exist_ok=True)
            for i in range(n):
                png(os.path.join(a.folder, name, CLASSES[lab[i]], f"{i:05}.png"),
                    w, h, px[i * h * w:(i + 1) * h * w])
    if a.npz:
        with zipfile.ZipFile(a.npz, "w", zipfile.ZIP_DEFLATED) as z:
            for name, (n, h, w, px, lab) in splits.items():
                z.writestr(f"x_{name}.npy", npy("|u1", (n, h, w), px))
                z.writestr(f"y_{name}.npy",
                           npy("<i8", (n,), b"".join(struct.pack("<q", l) for l in lab)))


if __name__ == "__main__":
    main()
