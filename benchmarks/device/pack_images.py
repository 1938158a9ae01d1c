"""Pack an image folder (train|test/<class>/*.jpg) into one file, and unpack it.

The device machine (a GPU lent for a few minutes) receives only the repository,
at most 64 MiB: the 60,000 JPEG files of the proxy data fit as their bytes
(about 53 MiB), not as a tar (about 75 MiB of headers and padding), and their
bytes compressed with xz (Python's lzma) take about 17 MiB: the files' headers,
tables that every one of them repeats, are most of a 32x32 JPEG. The bytes are
copied unchanged, so the unpacked folder is the original, file for file. Packs
written before the compression (plain bytes) still unpack.

    python benchmarks/device/pack_images.py pack ../shared/data/cifar10-jpeg75 F
    python benchmarks/device/pack_images.py unpack F FOLDER
"""

from __future__ import annotations

import argparse
import json
import lzma
import struct
import zlib
from pathlib import Path


def pack(folder: Path, out: Path) -> int:
    paths = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.glob("*/*/*")
        if p.is_file() and p.parts[-3] in ("train", "test")
    )
    if not paths:
        raise SystemExit(f"{folder} holds no train/<class>/* or test/<class>/* files.")
    sizes = [(folder / p).stat().st_size for p in paths]
    header = zlib.compress(json.dumps({"paths": paths, "sizes": sizes}).encode(), 9)
    with lzma.open(out, "wb", preset=6) as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for p in paths:
            f.write((folder / p).read_bytes())
    return len(paths)


def unpack(packed: Path, folder: Path) -> int:
    with open(packed, "rb") as f:
        compressed = f.read(6) == b"\xfd7zXZ\x00"
    with (lzma.open if compressed else open)(packed, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(zlib.decompress(f.read(length)))
        for path, size in zip(header["paths"], header["sizes"], strict=True):
            target = folder / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.read(size))
    return len(header["paths"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["pack", "unpack"])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    args = parser.parse_args()
    if args.action == "pack":
        print(f"packed {pack(args.source, args.target):,} files into {args.target}")
    else:
        print(f"unpacked {unpack(args.source, args.target):,} files into {args.target}")


if __name__ == "__main__":
    main()
