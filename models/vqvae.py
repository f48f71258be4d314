"""The Shannon rate-distortion autoencoder with a vector quantiser (VQ-VAE): a deterministic encoder, a discrete
code of M positions over a learned codebook, a learned entropy model, and a decoder.

    z_n ~ p(z) = Π_m π_m[j_m(z_n)]       the entropy model: the probability of z_n's quantisation cell per position
    ẑ_n = Q(z_n)                         nearest codeword per position, straight-through gradient
    x_n ~ p(x | ẑ_n) = L(f_θ(ẑ_n))       likelihood L over the decoder's output
    for n in the data plate

with the guide z_n = e_φ(x_n) (a point mass, :mod:`pyroib.guides.vqvae`). The rate is the code length
-Σ_m log π_m[j_m] in nats, the distortion -log p(x | ẑ); with the Gaussian likelihood the distortion is a squared
error. The entropy model π is estimated from running counts of the training codes (its maximum-likelihood value,
so the rate tracks the codes' entropy); it has no gradient, so a β on the rate changes nothing: the rate is set by
M, K and the entropy-constrained ``rate_penalty``. M positions of a K-word codebook carry at most M log K nats, so
the rate ranges from a few bits (M = 1) to hundreds per image. ``pyroib compress`` writes the indices j with an
entropy coder under π (:mod:`pyroib.codec`).
See :mod:`pyroib.quantisation` for the codebook's training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyroib.likelihoods import likelihood_and_decoder, make_likelihood
from pyroib.networks import SpatialDecoder, feature_cells
from pyroib.plates import data_plate
from pyroib.quantisation import CODEBOOK_UPDATES, CodebookPrior, VectorQuantiser, code_counts, position_entropy


@dataclass(frozen=True)
class Config:
    data_shape: tuple[int, ...] = (1, 28, 28)
    positions: int = 8  # M codebooks, one per latent position (product quantisation)
    codebook_size: int = 256  # K codewords each: at most M·log2(K) bits per image
    code_dim: int = 16  # D dimensions per position
    shared_codebook: bool = False  # one codebook for all positions (VQ-VAE's) instead of one each
    hidden: tuple[int, ...] = (512, 256)
    network: str = "mlp"
    likelihood: str = "gaussian"
    codebook_update: str = "ema"  # ema: moving averages of assigned encodings; gradient: the codebook loss
    commitment: float = 0.25  # β_c of the commitment cost β_c ||z - sg[ẑ]||² (van den Oord et al.)
    ema_decay: float = 0.99
    # λ > 0: entropy-constrained cells, argmin ||z - c_j||² - λ log π_j (Chou et al. 1989): fewer bits, more error
    rate_penalty: float = 0.0
    # U ~ N(0, I) of this size enters the decoder beside ẑ (generative compression); the guide draws it from the
    # same N(0, I), so it costs no rate and the decoded image is a sample, not a mean, given the code
    noise_dim: int = 0
    # one code per cell of the conv network's feature map (positions = its cells, code_dim its channels), decoded by
    # transposed convolutions from that grid: a code that keeps the image's layout, for rates of hundreds of bits
    spatial: bool = False

    def __post_init__(self):
        if min(self.positions, self.codebook_size, self.code_dim) < 1:
            raise ValueError(
                f"positions, codebook_size and code_dim must be >= 1, got {self.positions}, {self.codebook_size}, "
                f"{self.code_dim}"
            )
        if self.codebook_update not in CODEBOOK_UPDATES:
            raise ValueError(
                f"unknown codebook_update {self.codebook_update!r}: choose one of {', '.join(CODEBOOK_UPDATES)}"
            )
        if self.noise_dim < 0:
            raise ValueError(f"noise_dim must be >= 0, got {self.noise_dim}")
        if self.rate_penalty < 0:
            raise ValueError(f"rate_penalty must be >= 0, got {self.rate_penalty}")
        if self.commitment < 0:
            raise ValueError(f"the commitment weight must be >= 0, got {self.commitment}")
        if self.spatial:
            if self.network != "conv":
                raise ValueError("a spatial code is the feature map of the conv network: pass --network conv")
            cells = feature_cells(tuple(self.data_shape), tuple(self.hidden))
            if self.positions != cells:
                side = 2 ** len(self.hidden)
                grid = f"{self.data_shape[1] // side} x {self.data_shape[2] // side}"
                raise ValueError(
                    f"a spatial code has one position per cell of the conv feature map ({grid} for a "
                    f"{tuple(self.data_shape)} image and {len(self.hidden)} stride-2 layers): pass --positions {cells}"
                )

    @property
    def max_bits(self) -> float:
        return self.positions * math.log2(self.codebook_size)


class Model(nn.Module):
    latent_site = "z"

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.quantiser = VectorQuantiser(
            config.positions,
            config.codebook_size,
            config.code_dim,
            shared=config.shared_codebook,
            update=config.codebook_update,
            decay=config.ema_decay,
            rate_penalty=config.rate_penalty,
        )
        if config.spatial:
            self.likelihood = make_likelihood(config.likelihood, config.data_shape)
            self.decoder = SpatialDecoder(
                config.code_dim + config.noise_dim,
                config.hidden,
                config.data_shape,
                out_factor=self.likelihood.params_per_pixel,
            )
        else:
            self.likelihood, self.decoder = likelihood_and_decoder(
                config.positions * config.code_dim + config.noise_dim, config
            )

    def prior(self, batch_size: int) -> CodebookPrior:
        log_probs = self.quantiser.log_probabilities()
        return CodebookPrior(log_probs.expand(batch_size, *log_probs.shape), self.quantiser)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, index=None, size=None):
        with data_plate(x, index, size):
            z = pyro.sample("z", self.prior(x.shape[0]))
            quantised, codewords, _ = self.quantiser(z)
            if self.config.commitment > 0:
                pyro.factor("commitment", -self.config.commitment * (z - codewords.detach()).pow(2).sum((-2, -1)))
            if self.config.codebook_update == "gradient":
                pyro.factor("codebook", -(z.detach() - codewords).pow(2).sum((-2, -1)))
            u = None
            if self.config.noise_dim:
                u = pyro.sample("u", noise_distribution(quantised.flatten(-2), self.config.noise_dim))
            pyro.sample("x", self.likelihood(self.decoder(self._decoder_input(quantised, u))), obs=x)
        return z

    def _decoder_input(self, quantised: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        """ẑ (..., M, D) and the noise U as the decoder reads them: one flat vector, or for a spatial code U's
        channels beside every cell's codeword."""
        if self.config.spatial:
            if u is None:
                return quantised
            return torch.cat([quantised, u.unsqueeze(-2).expand(*quantised.shape[:-1], -1)], -1)
        code = quantised.flatten(-2)
        return code if u is None else torch.cat([code, u.expand(*code.shape[:-1], -1)], -1)

    def check_data(self, x: torch.Tensor, binarize: str) -> None:
        self.likelihood.check_data(x, binarize)

    def _decode_code(self, quantised: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Mean image of codewords ẑ (..., M, D), U drawn with ``generator`` when the program has noise."""
        u = None
        if self.config.noise_dim:
            u = torch.randn(*quantised.shape[:-2], self.config.noise_dim, generator=generator, device=quantised.device)
            u = u.to(quantised.dtype)
        return self.likelihood.mean(self.decoder(self._decoder_input(quantised, u)))

    def decode(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean image E[x | ẑ, u] of codes z (..., M, D) or (..., M·D), quantised first (u ~ N(0, I) drawn with
        ``generator`` when the program has noise)."""
        z = z.reshape(*z.shape[:-1], self.config.positions, self.config.code_dim) if z.dim() == 2 else z
        return self._decode_code(self.quantiser(z)[0], generator)

    def decode_indices(self, index: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean image of codeword indices (..., M): the decompressor's half."""
        from pyroib.quantisation import lookup

        return self._decode_code(lookup(index, self.quantiser.codebook), generator)

    def code_probabilities(self) -> torch.Tensor:
        """π (M, K): the entropy model the codec writes the indices under."""
        return self.quantiser.log_probabilities().exp()

    def sample_images(self, n: int, steps: int | None = None, generator: torch.Generator | None = None):
        """Codes drawn from the entropy model π (positions independent), decoded. ``steps`` has no meaning here."""
        if steps is not None:
            raise ValueError("--steps is for a diffusion's reverse chain; a vector-quantised code has none")
        index = torch.multinomial(self.code_probabilities(), n, replacement=True, generator=generator).T
        with torch.no_grad():
            return self.decode_indices(index, generator).clamp(0, 1)

    def encode_indices(self, guide, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """Codeword indices (N, M) of images x (a uint8 data set read a batch at a time), on x's device."""
        from pyroib.data import as_images

        with torch.no_grad():
            return torch.cat(
                [
                    self.quantiser.assign(guide.encode_codes(as_images(x[i : i + batch_size])))
                    for i in range(0, x.shape[0], batch_size)
                ]
            )

    def metrics(self, guide, x: torch.Tensor, y=None) -> dict:
        """The code's length, entropy and usage, and the distortion of the images a decompressor gives (decoder noise
        drawn as ``pyroib decompress`` draws it)."""
        generator = torch.Generator(device=x.device).manual_seed(0)
        chunks = range(0, x.shape[0], 1000)
        index = self.encode_indices(guide, x)
        with torch.no_grad():
            reconstruction = torch.cat([self.decode_indices(index[i : i + 1000], generator) for i in chunks])
        return code_statistics(index, self.code_probabilities(), self.config) | distortion_measures(reconstruction, x)


def noise_distribution(like: torch.Tensor, size: int):
    """N(0, I) over the decoder's noise input U, one per data point."""
    zeros = like.new_zeros(like.shape[:-1] + (size,))
    return dist.Normal(zeros, 1.0).to_event(1)


def code_statistics(index: torch.Tensor, probabilities: torch.Tensor, config: Config) -> dict:
    """Code length under the entropy model and the codes' empirical entropy and usage, from indices (N, M)."""
    counts = code_counts(index, config.codebook_size)
    entropy = position_entropy(index, config.codebook_size)
    code_length = -probabilities.double().log().gather(-1, index.T).sum(0)  # per point, nats
    return {
        "code_length": float(code_length.mean()),
        "bits_per_image": float(code_length.mean()) / math.log(2),
        "code_entropy": float(entropy.sum()),
        "code_entropy_bits": float(entropy.sum()) / math.log(2),
        "codebook_perplexity": float(entropy.exp().mean()),
        "codewords_used": float((counts > 0).sum(-1).double().mean()),
        "max_bits_per_image": config.max_bits,
    }


def distortion_measures(reconstruction: torch.Tensor, x: torch.Tensor) -> dict:
    """Mean squared error per pixel and PSNR (peak 1) of reconstructions in [0, 1]."""
    mse = (reconstruction.clamp(0, 1) - x).pow(2).flatten(1).mean(1)
    return {"mse": float(mse.mean()), "psnr": float((-10 * mse.clamp_min(1e-12).log10()).mean())}
