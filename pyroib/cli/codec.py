"""``pyroib compress`` and ``pyroib decompress``: a vector-quantised run as a codec with real files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .arguments import run_flags


def compress(argv: list[str]) -> None:
    from ..codec import compress as write_bitstream
    from ..evaluate import load_splits
    from ..run import load_run

    p = argparse.ArgumentParser(
        prog="pyroib compress",
        description="Entropy-code a split's images with a vector-quantised run (pyroib train --model vqvae) into one "
        "file; prints the measured size per image beside the ideal code length",
    )
    run_flags(p)
    p.add_argument("--out", required=True, help="the file to write (replaced atomically)")
    p.add_argument("--json", action="store_true", help="print the sizes as JSON")
    args = p.parse_args(argv)
    run = load_run(args.run, args.device, args.checkpoint)
    x, _ = load_splits(run).split(args.split)
    sizes = write_bitstream(run, x, args.out, args.split)
    if args.json:
        print(json.dumps(sizes, indent=2))
        return
    print(
        f"{sizes['images']} {args.split} images -> {args.out}: {sizes['file_bytes']} bytes "
        f"({sizes['header_bytes']} header + {sizes['payload_bytes']} payload); "
        f"{sizes['bits_per_image']:.2f} bits per image against a code length of "
        f"{sizes['code_length_bits_per_image']:.2f} under the entropy model "
        f"(gap {sizes['gap_bits_per_image']:.3f} bits per image)"
    )


def decompress(argv: list[str]) -> None:
    import numpy as np

    from ..checkpoint import atomic_directory
    from ..codec import decode_file, decode_images, read_file, write_images
    from ..run import load_run

    p = argparse.ArgumentParser(
        prog="pyroib decompress",
        description="Decode a file written by pyroib compress into one PNG per image (and codes.npy, the indices)",
    )
    p.add_argument("file")
    p.add_argument("--out", required=True, help="folder to write (replaced whole when complete)")
    p.add_argument("--run", default=None, help="the run that compressed the file, if it has moved since")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    header, words = read_file(args.file)
    run_dir = Path(args.run or header["run"])
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"{args.file} was compressed with the run {header['run']}, which is not there: pass --run DIR"
        )
    run = load_run(run_dir, args.device, header["checkpoint"])
    index = decode_file(run, header, words)
    images = decode_images(run, index)
    with atomic_directory(args.out) as tmp:
        count = write_images(images, tmp)
        np.save(Path(tmp) / "codes.npy", index.numpy())
    print(f"{count} images decoded from {args.file} into {args.out}")
