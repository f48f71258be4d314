"""Rate-distortion of learned codecs on Fashion-MNIST (grey levels) against JPEG, WebP and PNG, and the
rate-distortion-perception table of the plain and the generative codec.

Every learned codec trains from the command line a user would type (``pyroib train --model vqvae ...``), writes the
test split with ``pyroib compress`` and is decoded back from that file; its rate is the **measured** payload per
image (the file's 32-bit words over 10,000 images; the file's header, a few hundred bytes once, is reported apart), next
to the code length under the entropy model and the codes' empirical entropy H(ẑ) (summed over positions), and its
distortion the MSE of the decoded 8-bit images against the test images, in [0, 1]. JPEG and WebP (Pillow) are
measured image by image over their quality range: the payload of an image is its file size minus the size of a blank
28 x 28 image at the same quality (the headers and tables every file repeats), reported in its own column. PNG is
the lossless reference. The VAE (Gaussian likelihood) is on the same axes with its rate, the bits-back code length
KL(q(z|x) || p(z)), and the MSE of its decoder mean at the posterior mean.

Target (the issue's): at each JPEG and WebP quality, some learned codec with lower MSE at an equal or smaller
measured payload. The perception table compares, at matched rate, the plain codec and the generative one (decoder
noise U, a critic on reconstructions): MSE against the Fréchet distance of the decoded test images to the test images
in pyroib's Fashion-MNIST features.

Resumable: each learned codec trains in a folder under ``--out``; its measured point is a unit of ``harness.Units``
(keyed by epochs and seed, committed with ``--record``, so a later checkout goes on). ``--only`` chooses what to
train; the tables show every point measured so far. ``--minutes`` stops starting new ones after that long.

    python benchmarks/rate_distortion.py --record [--epochs 30] [--minutes 60]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
from pathlib import Path

import harness
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
QUALITIES = (1, 5, 10, 20, 30, 50, 75, 90, 95)
MLP = ["--hidden", "1024,512"]
# name -> flags: M positions x K codewords (at most M log2 K bits); the entropy-constrained penalty λ buys fewer bits


def _vq(model: str, positions: int, *extra: str) -> list[str]:
    return ["--model", model, "--positions", str(positions), "--codebook-size", "256", "--code-dim", "8", *extra, *MLP]


CODECS = {
    "vq 4x64": ["--model", "vqvae", "--positions", "4", "--codebook-size", "64", "--code-dim", "8", *MLP],
    **{f"vq {m}x256": _vq("vqvae", m) for m in (8, 16, 32, 64, 128, 256)},
    "vq 64x256 λ=0.5": _vq("vqvae", 64, "--rate-penalty", "0.5"),
    # spatial codes (one per cell of the conv feature map, shared codebook): 7 x 7 and 14 x 14 grids
    "vq spatial 7x7x256": [
        *("--model", "vqvae", "--network", "conv", "--spatial", "true", "--hidden", "64,128", "--positions", "49"),
        *("--code-dim", "32", "--codebook-size", "256", "--shared-codebook", "true"),
    ],
    "vq spatial 14x14x16": [
        *("--model", "vqvae", "--network", "conv", "--spatial", "true", "--hidden", "64", "--positions", "196"),
        *("--code-dim", "16", "--codebook-size", "16", "--shared-codebook", "true"),
    ],
    "vq spatial 14x14x64": [
        *("--model", "vqvae", "--network", "conv", "--spatial", "true", "--hidden", "64", "--positions", "196"),
        *("--code-dim", "16", "--codebook-size", "64", "--shared-codebook", "true"),
    ],
    "vq spatial 14x14x256": [
        *("--model", "vqvae", "--network", "conv", "--spatial", "true", "--hidden", "64", "--positions", "196"),
        *("--code-dim", "16", "--codebook-size", "256", "--shared-codebook", "true"),
    ],
    "generative 16x256": _vq("generative-codec", 16),
    "generative 64x256": _vq("generative-codec", 64),
}
VAES = {
    "VAE 20-d, β=1": ["--model", "vae", "--likelihood", "gaussian", "--binarize", "none", "--latent-dim", "20", *MLP],
    "VAE 64-d, β=1": ["--model", "vae", "--likelihood", "gaussian", "--binarize", "none", "--latent-dim", "64", *MLP],
}
PERCEPTION_PAIRS = (("vq 16x256", "generative 16x256"), ("vq 64x256", "generative 64x256"))


def _test_images():
    from pyroib.data import load_dataset

    splits = load_dataset("fashion-mnist", binarize="none")
    x = splits.test
    return (x * 255).round().to(dtype=__import__("torch").uint8)[:, 0].numpy() if x.is_floating_point() else x[:, 0]


def standard_codecs(images: np.ndarray) -> list[dict]:
    """JPEG and WebP at each quality and PNG: mean file bytes, header bytes, payload bits and MSE per image."""
    from PIL import Image

    def encode(image, fmt, **options):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, fmt, **options)
        return buffer.getvalue()

    rows = []
    blank = np.zeros_like(images[0])
    for fmt in ("JPEG", "WEBP"):
        for quality in QUALITIES:
            header = len(encode(blank, fmt, quality=quality))
            sizes, errors = [], []
            for image in images:
                data = encode(image, fmt, quality=quality)
                decoded = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float64)
                sizes.append(len(data))
                errors.append(((decoded - image) / 255.0) ** 2)
            mse = float(np.mean(errors))
            rows.append(
                {
                    "codec": f"{fmt} q={quality}",
                    "file_bytes": float(np.mean(sizes)),
                    "header_bytes": header,
                    "payload_bits": 8 * (float(np.mean(sizes)) - header),
                    "mse": mse,
                    "psnr": float(np.mean([-10 * math.log10(max(e.mean(), 1e-12)) for e in errors])),
                }
            )
    png = [len(encode(image, "PNG", optimize=True)) for image in images]
    header = len(encode(blank, "PNG", optimize=True))
    rows.append(
        {
            "codec": "PNG (lossless)",
            "file_bytes": float(np.mean(png)),
            "header_bytes": header,
            "payload_bits": 8 * (float(np.mean(png)) - header),
            "mse": 0.0,
            "psnr": math.inf,
        }
    )
    return rows


def _train(folder: Path, flags: list[str], epochs: int, seed: int) -> Path:
    return harness.train_run(
        folder, [*flags, "--dataset", "fashion-mnist", "--epochs", str(epochs), "--seed", str(seed)]
    )


def learned_codec(name: str, folder: Path, epochs: int, seed: int, images: np.ndarray) -> dict:
    """Train, compress the test split to a file, decode it back; the measured point (and the decoded images' Fréchet
    distance for the perception table)."""
    import torch

    from pyroib.codec import decode_file, decode_images, read_file
    from pyroib.frechet import frechet_distance, image_features, load_feature_network
    from pyroib.run import load_run

    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    run_dir = _train(folder, CODECS[name], epochs, seed)
    file = folder / "test.bin"
    sizes = json.loads(
        harness.pyroib(
            ["compress", str(run_dir), "--out", str(file), "--json", "--device", "cpu"],
            folder / "log.txt",
            capture=True,
        )
    )
    run = load_run(run_dir)
    header, words = read_file(file)
    decoded = decode_images(run, decode_file(run, header, words))
    decoded8 = (decoded * 255).round()
    truth = torch.as_tensor(images, dtype=torch.float64).unsqueeze(1)
    mse_per_image = ((decoded8.double() - truth) / 255).pow(2).flatten(1).mean(1)
    network = load_feature_network()
    fid = frechet_distance(
        image_features(decoded8.float() / 255, network), image_features(truth.float() / 255, network)
    )
    result = {
        "codec": name,
        "entropy_bits": _code_entropy_bits(decode_file(run, header, words), run.model.quantiser.size),
        "file_bytes": sizes["file_bytes"] / sizes["images"],
        "header_bytes": sizes["header_bytes"],
        "payload_bits": sizes["bits_per_image"],
        "code_length_bits": sizes["code_length_bits_per_image"],
        "mse": float(mse_per_image.mean()),
        "psnr": float((-10 * mse_per_image.clamp_min(1e-12).log10()).mean()),
        "frechet": fid,
        "epochs": epochs,
        "seed": seed,
        "seconds": time.perf_counter() - started,
    }
    return result


def _code_entropy_bits(index, codebook_size: int) -> float:
    """H(ẑ) of the test codes, bits per image: each position's empirical entropy, summed."""
    from pyroib.quantisation import position_entropy

    return float(position_entropy(index, codebook_size).sum()) / math.log(2)


def vae_point(name: str, folder: Path, epochs: int, seed: int) -> dict:
    """The VAE's bits-back rate KL(q || p) and the MSE of its decoder mean at the posterior mean."""
    import torch

    from pyroib.evaluate import load_splits
    from pyroib.run import load_run

    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    run_dir = _train(folder, VAES[name], epochs, seed)
    argv = ["evaluate", str(run_dir), "--json", "--device", "cpu", "--iw-samples", "0", "--full-data-points", "0"]
    evaluation = json.loads(harness.pyroib(argv, folder / "log.txt", capture=True))
    run = load_run(run_dir)
    x, _ = load_splits(run).split("test")
    with torch.no_grad():
        decoded = torch.cat([run.model.decode(run.guide.encode(x[i : i + 1000])[0]) for i in range(0, len(x), 1000)])
    mse = ((decoded.clamp(0, 1) * 255).round() / 255 - x).pow(2).flatten(1).mean(1)
    result = {
        "codec": name,
        "payload_bits": evaluation["rate"] / math.log(2),
        "mse": float(mse.mean()),
        "psnr": float((-10 * mse.clamp_min(1e-12).log10()).mean()),
        "epochs": epochs,
        "seed": seed,
        "seconds": time.perf_counter() - started,
    }
    return result


def _label(row: dict) -> str:
    return row["codec"] + (f" ({row['epochs']} ep.)" if "epochs" in row else "")


def target_rows(standard: list[dict], learned: list[dict]) -> list[str]:
    lines = []
    for row in standard:
        if row["codec"].startswith("PNG"):
            continue
        better = [c for c in learned if c["payload_bits"] <= row["payload_bits"] and c["mse"] < row["mse"]]
        best = min(better, key=lambda c: c["mse"]) if better else None
        verdict = (
            f"met by {_label(best)} (MSE {best['mse']:.5f} at {best['payload_bits']:.0f} bits)"
            if best
            else ("**not met**")
        )
        lines.append(f"| {row['codec']} | {row['payload_bits']:.0f} | {row['mse']:.5f} | {verdict} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "rate_distortion")
    parser.add_argument("--minutes", type=float, default=None, help="start no new codec after this long")
    parser.add_argument("--only", nargs="*", default=None, help="codec names to train (default: all)")
    harness.add_record_flag(parser)
    args = parser.parse_args()
    started = time.perf_counter()
    images = _test_images()
    units = harness.Units(args, "rate_distortion")
    if (standard := units.get("standard-codecs")) is None:
        standard = units.put("standard-codecs", {"rows": standard_codecs(images)})
    standard = standard["rows"]
    pending = []
    for name in [*CODECS, *VAES]:
        key = f"{harness.slug(name)}-e{args.epochs}-s{args.seed}"
        if (args.only is not None and name not in args.only) or units.done(key):
            continue
        if args.minutes is not None and time.perf_counter() - started > 60 * args.minutes:
            pending.append(name)
            continue
        folder = args.out / key
        if name in CODECS:
            units.put(key, learned_codec(name, folder, args.epochs, args.seed, images))
        else:
            units.put(key, vae_point(name, folder, args.epochs, args.seed))
        print(f"{name}: done ({time.perf_counter() - started:.0f} s)", flush=True)
    stored = [json.loads(path.read_text()) for path in sorted(units.folder.glob("*.json"))]
    learned = [r for r in stored if r.get("codec") in CODECS]
    vaes = [r for r in stored if r.get("codec") in VAES]
    lines = [
        "# Rate-distortion on Fashion-MNIST: learned codecs against JPEG, WebP and PNG",
        "",
        f"Command: `{harness.command()}`  ",
        f"Machine: {harness.machine()}  ",
        "Learned codecs: trained for the epochs in brackets; measured on the 10,000 test images from the "
        "file `pyroib compress` wrote. Rates are payload bits per image (headers apart), MSE on [0, 1] grey levels.",
        "",
        "| codec | payload bits / image | header bytes (once per file) | MSE | PSNR (dB) | code length bits | "
        "H(ẑ) bits | Fréchet | train+measure (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(row, key, digits):
        return f"{row[key]:.{digits}f}" if key in row else "—"

    for row in sorted(standard + learned + vaes, key=lambda r: r["payload_bits"]):
        lines.append(
            f"| {_label(row)} | {row['payload_bits']:.1f} | {row.get('header_bytes', '—')} | {row['mse']:.5f} | "
            f"{row['psnr']:.2f} | {cell(row, 'code_length_bits', 1)} | {cell(row, 'entropy_bits', 1)} | "
            f"{cell(row, 'frechet', 2)} | "
            f"{cell(row, 'seconds', 0)} |"
        )
    lines += [
        "",
        "## Target: a learned codec below each JPEG and WebP setting",
        "",
        "| setting | payload bits | MSE | learned codec with lower MSE at ≤ the bits |",
        "|---|---|---|---|",
    ]
    lines += target_rows(standard, learned)
    done = {c["codec"]: c for c in learned}
    lines += [
        "",
        "## Rate, distortion and perception at matched rate",
        "",
        "| codec | payload bits | MSE | Fréchet distance to the test images |",
        "|---|---|---|---|",
    ]
    for pair in PERCEPTION_PAIRS:
        for name in pair:
            if name in done:
                c = done[name]
                lines.append(f"| {_label(c)} | {c['payload_bits']:.1f} | {c['mse']:.5f} | {c['frechet']:.2f} |")
    if pending:
        lines += ["", f"Not yet run (rerun the command to go on): {', '.join(pending)}."]
    harness.write_results(args, "rate_distortion.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
