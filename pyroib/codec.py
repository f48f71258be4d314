"""Real bitstreams from a trained vector-quantised run: ``pyroib compress`` and ``pyroib decompress``.

The codeword indices of each image are range-coded under the run's entropy model π (one categorical per latent
position) with constriction's ``RangeEncoder`` (Bamler 2022, https://bamler-lab.github.io/constriction/), a
maintained entropy coder; the decoder reads them back bit for bit and decodes the images with the run's decoder.

A file is ``MAGIC``, a 4-byte little-endian header length, a JSON header (the run it needs, a digest of that run's
decoder and entropy model, the number of images, their shape) and the payload: the coder's 32-bit words. The
payload per image is the learned codec's rate; the header is reported separately (it is paid once per file, like
JPEG's tables are paid once per image).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path

import numpy as np
import torch

from .checkpoint import atomic_write_bytes
from .quantisation import code_counts, position_entropy

MAGIC = b"PYROIB-VQ\n"
FORMAT = 2  # 2: positions coded one after another, payload size and checksum in the header


class CodecError(ValueError):
    """A file that is not a pyroib bitstream, or a run that cannot read or write one."""


def require_codec(run) -> None:
    """The run must be a vector-quantised program: a model with a quantiser and a decoder of indices."""
    model = run.model
    if not (hasattr(model, "quantiser") and callable(getattr(model, "decode_indices", None))):
        raise CodecError(
            f"{run.run_dir}: compress needs a vector-quantised run (pyroib train --model vqvae); "
            f"this run's model ({run.spec.model}) has no discrete code to write"
        )


def model_digest(model) -> str:
    """sha256 of the model's weights and buffers (codebook, entropy model, decoder), in name order: a file names the
    exact decoder it needs."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def code_indices(run, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Codeword indices (N, M) of images x under the run's encoder and quantiser, on the CPU."""
    return run.model.encode_indices(run.guide, x, batch_size).cpu()


def _probabilities(model) -> np.ndarray:
    """π (M, K) in float64, computed on the CPU in float64 so that the encoder and the decoder quantise exactly the
    same numbers."""
    return model.quantiser.probabilities(torch.float64).cpu().numpy()


def _coder_model(probabilities: np.ndarray):
    import constriction

    # perfect=False: constriction's fast approximate quantisation of the probabilities, deterministic across runs
    return constriction.stream.model.Categorical(probabilities, perfect=False)


def compress(run, x: torch.Tensor, out: str | Path, split: str) -> dict:
    """Write the entropy-coded indices of images ``x`` to ``out`` (atomically); returns the sizes measured."""
    import constriction

    require_codec(run)
    index = code_indices(run, x)
    probabilities = _probabilities(run.model)
    encoder = constriction.stream.queue.RangeEncoder()
    # position by position, each with its own fixed categorical: memory O(N), whatever M and K
    for m in range(index.shape[1]):
        encoder.encode(index[:, m].numpy().astype(np.int32), _coder_model(probabilities[m]))
    payload = encoder.get_compressed().astype("<u4").tobytes()
    header = json.dumps(
        {
            "format": FORMAT,
            "run": str(Path(run.run_dir).resolve()),
            "checkpoint": run.checkpoint,
            "model_sha256": model_digest(run.model),
            "split": split,
            "images": int(index.shape[0]),
            "positions": int(index.shape[1]),
            "data_shape": list(x.shape[1:]),
            "payload_words": len(payload) // 4,
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
        },
        sort_keys=True,
    ).encode()
    blob = MAGIC + struct.pack("<I", len(header)) + header + payload
    atomic_write_bytes(out, lambda f: f.write(blob))
    code_length = float(-np.log2(probabilities[np.arange(index.shape[1]), index.numpy()]).sum())
    images = index.shape[0]
    return {
        "images": images,
        "file_bytes": len(blob),
        "header_bytes": len(blob) - len(payload),
        "payload_bytes": len(payload),
        "bits_per_image": 8 * len(payload) / images,
        "code_length_bits_per_image": code_length / images,
        "gap_bits_per_image": (8 * len(payload) - code_length) / images,
    }


def read_file(path: str | Path) -> tuple[dict, np.ndarray]:
    """(header, payload words) of a pyroib bitstream; a clear error for anything else."""
    blob = Path(path).read_bytes()
    if not blob.startswith(MAGIC):
        raise CodecError(
            f"{path} is not a pyroib bitstream (it does not start with {MAGIC!r}); write one with "
            "pyroib compress RUN --out FILE"
        )
    start = len(MAGIC) + 4
    if len(blob) < start:
        raise CodecError(f"{path} is truncated: it ends inside its header")
    (length,) = struct.unpack("<I", blob[len(MAGIC) : start])
    try:
        header = json.loads(blob[start : start + length])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CodecError(f"{path} is truncated or corrupt: its header is not readable") from None
    if header.get("format") != FORMAT:
        raise CodecError(f"{path} is format {header.get('format')}; this pyroib reads format {FORMAT}")
    payload = blob[start + length :]
    if len(payload) != 4 * header.get("payload_words", -1) or (
        hashlib.sha256(payload).hexdigest() != header.get("payload_sha256")
    ):
        raise CodecError(
            f"{path} is truncated or corrupt: its payload is {len(payload)} bytes, not the "
            f"{4 * header.get('payload_words', 0)} its header records with their checksum"
        )
    return header, np.frombuffer(payload, dtype="<u4").astype(np.uint32)


def decode_file(run, header: dict, words: np.ndarray) -> torch.Tensor:
    """Indices (N, M) from the payload, after checking that ``run`` is the model the file was written with."""
    import constriction

    require_codec(run)
    if model_digest(run.model) != header["model_sha256"]:
        raise CodecError(
            f"{run.run_dir} ({run.checkpoint} checkpoint) is not the model this file was compressed with (its "
            "weights differ, e.g. training resumed since): decompress with that run's checkpoint"
        )
    decoder = constriction.stream.queue.RangeDecoder(words)
    probabilities = _probabilities(run.model)
    columns = [decoder.decode(_coder_model(probabilities[m]), header["images"]) for m in range(header["positions"])]
    return torch.as_tensor(np.stack(columns, 1).astype(np.int64))


def decode_images(run, index: torch.Tensor, batch_size: int = 1000, seed: int = 0) -> torch.Tensor:
    """Images in [0, 1] of indices (N, M); a generative codec's decoder noise U is drawn from ``seed``, so decoding
    a file twice gives the same images."""
    generator = torch.Generator(device=run.device).manual_seed(seed)
    with torch.no_grad():
        return torch.cat(
            [
                run.model.decode_indices(index[i : i + batch_size].to(run.device), generator).cpu()
                for i in range(0, index.shape[0], batch_size)
            ]
        ).clamp(0, 1)


def write_images(images: torch.Tensor, out_dir: str | Path) -> int:
    """One 8-bit PNG per image (grey or RGB), named by its position in the file: 00000.png, ..."""
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    width = max(5, math.ceil(math.log10(max(images.shape[0], 1))))
    array = (images * 255).round().to(torch.uint8).numpy()
    for i, image in enumerate(array):
        pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
        Image.fromarray(pixels).save(out_dir / f"{i:0{width}d}.png")
    return array.shape[0]


def report_section(run, splits, out_dir) -> dict[str, str]:
    """For ``pyroib report`` of a vector-quantised run: decoded test images, images of codes drawn from the entropy
    model, and each position's code entropy against its bits. {title: png}."""
    if not hasattr(run.model, "quantiser") or len(splits.data_shape) != 3:
        return {}
    from .figures import plot, save_grid

    out_dir = Path(out_dir)
    model, quantiser = run.model, run.model.quantiser
    x, _ = splits.split("test")
    index = code_indices(run, x)
    decoded = decode_images(run, index[:32]).to(x.device)
    pairs = torch.stack([x[:32], decoded], 1).reshape(-1, *splits.data_shape)
    save_grid(
        pairs.cpu(),
        out_dir / "codec_reconstructions.png",
        nrow=16,
        title="test images (odd columns) and what pyroib decompress gives back (even)",
    )
    samples = model.sample_images(64, generator=torch.Generator(device=run.device).manual_seed(0))
    save_grid(
        samples.cpu(),
        out_dir / "codec_samples.png",
        nrow=8,
        title="codes drawn from the entropy model π (positions independent), decoded",
    )
    frequency = code_counts(index, quantiser.size) / index.shape[0]
    entropy_bits = position_entropy(index, quantiser.size) / math.log(2)
    length_bits = -(frequency * model.code_probabilities().double().cpu().log2()).sum(-1)

    def per_position(ax):
        positions = range(len(entropy_bits))
        ax.bar(positions, length_bits.tolist(), label="code length under π", color="tab:orange")
        ax.bar(positions, entropy_bits.tolist(), label="empirical code entropy", color="tab:blue")
        ax.axhline(
            math.log2(quantiser.size), color="k", linestyle="--", label=f"log2 K = {math.log2(quantiser.size):g}"
        )
        ax.set_xlabel("latent position")
        ax.set_ylabel("bits per image (test split)")
        ax.legend(fontsize=8)

    plot(out_dir / "codec_positions.png", per_position)
    return {
        "Decompressed test images": "codec_reconstructions.png",
        "Codes drawn from the entropy model": "codec_samples.png",
        "Bits per latent position": "codec_positions.png",
    }
