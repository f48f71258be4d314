"""Vector quantisation as a Pyro site: a codebook prior over quantisation cells and the quantiser that trains it.

The Shannon rate-distortion autoencoder (Voloshynovskiy et al., BIB-AE §4.2; van den Oord et al. 2017 for the
quantiser) encodes x deterministically to e(x) in M positions of D dimensions each, and quantises each position
to its nearest codeword, ẑ_m = c_{m, j_m}, j_m = argmin_j ||e_m - c_{m,j}||². As a model/guide pair:

    guide:  z = e(x)                          a point mass, log q = 0
    model:  z ~ p(z) = Π_m π_m[j_m(z)]        the probability of the cell z falls in (the entropy model)
            x ~ p(x | ẑ(z))                   decoded from the quantised code

so the rate E[log q - log p] is the expected code length -Σ_m log π_m[j_m] of the indices under the entropy model,
in nats: the number an entropy coder achieves to within a few bytes per file (:mod:`pyroib.codec`), and an upper
bound on the empirical code entropy H(ẑ), which it equals when π matches the codes' frequencies.

The quantiser passes gradients straight through (ẑ = c forward, ∂ẑ/∂z = I backward). The codebook learns by
exponential moving averages of the encodings assigned to each codeword (van den Oord et al. 2017, appendix; Razavi
et al. 2019) or by the codebook loss ||sg[z] - c||², and unused codewords restart at random encodings of the
current batch (the maintained fix for dead codewords, e.g. Dhariwal et al. 2020). The commitment cost
β_c ||z - sg[c]||² and the codebook loss are ``pyro.factor`` terms of the model: in the loss, outside p(x) (rule 7
of the program contract).
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import nn
from torch.distributions import constraints

from .distributed import current

CODEBOOK_UPDATES = ("ema", "gradient")
COUNT_FLOOR = 0.01  # pseudo-counts per codeword in the entropy model


def nearest(z: torch.Tensor, codebook: torch.Tensor, penalty: torch.Tensor | None = None) -> torch.Tensor:
    """Index of the nearest codeword for each position: z (..., M, D), codebook (M or 1, K, D) -> (..., M) long.

    ``penalty`` (M, K) is added to the squared distances: λ · (-log π) makes the cells those of entropy-constrained
    vector quantisation (Chou, Lookabaugh and Gray 1989), which trade squared error against code length."""
    batch_shape = z.shape[:-2]
    flat = z.detach().reshape(-1, *z.shape[-2:]).transpose(0, 1)  # (M, n, D)
    book = codebook.detach().expand(flat.shape[0], -1, -1)
    # ||z||² does not change the argmin: -2 z·c + ||c||²
    scores = (book * book).sum(-1).unsqueeze(1) - 2 * torch.bmm(flat, book.transpose(1, 2))
    if penalty is not None:
        scores = scores + penalty.detach().unsqueeze(1)
    return scores.argmin(-1).transpose(0, 1).reshape(*batch_shape, -1)


def code_counts(index: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """How often each position's codewords occur in indices (N, M): (M, K) float64."""
    return torch.nn.functional.one_hot(index, codebook_size).sum(0).double()


def position_entropy(index: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """The empirical entropy of each position's codes in indices (N, M), nats: (M,)."""
    frequency = code_counts(index, codebook_size) / index.shape[0]
    return -(frequency * frequency.clamp_min(1e-300).log()).sum(-1)


def lookup(index: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Codewords of indices (..., M) -> (..., M, D)."""
    positions = codebook.shape[0]
    m = torch.arange(index.shape[-1], device=index.device) % positions
    return codebook[m, index]


class CodebookPrior(TorchDistribution):
    """p(z) over R^{M x D}: the probability π_m[j] of the quantisation cell each position falls in, multiplied over
    positions. ``log_prob`` of any point is the log-mass of its cell (the quantiser's assignment), so a point mass in
    the guide gives rate = code length. Draws are codewords, index j with probability π_m[j]."""

    arg_constraints = {}
    support = constraints.independent(constraints.real, 2)
    has_rsample = False

    def __init__(self, log_probs: torch.Tensor, quantiser: "VectorQuantiser", validate_args=None):
        self.log_probs, self.quantiser = log_probs, quantiser  # log_probs (..., M, K), normalised
        super().__init__(log_probs.shape[:-2], torch.Size((log_probs.shape[-2], quantiser.dim)), validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return CodebookPrior(self.log_probs.expand(batch_shape + self.log_probs.shape[-2:]), self.quantiser)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        index = self.quantiser.assign(value)
        log_probs = self.log_probs.expand(index.shape + self.log_probs.shape[-1:])
        return log_probs.gather(-1, index.unsqueeze(-1)).squeeze(-1).sum(-1)

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            index = dist.Categorical(logits=self.log_probs).sample(sample_shape)
            return lookup(index, self.quantiser.codebook)


class VectorQuantiser(nn.Module):
    """Nearest-codeword quantisation of M positions onto ``codebook_size`` codewords of ``code_dim`` dimensions, one
    codebook per position (product quantisation) or one shared by all.

    Calling it returns (ẑ with straight-through gradient, the codewords, their indices) and, in a training step
    (module in training mode, gradients on), updates an EMA codebook and restarts codewords whose running count of
    assignments fell below ``restart_below``. The first training batch initialises the codebook with its own
    encodings (k-means' usual start), so no codeword starts far from the data.
    """

    def __init__(
        self,
        positions: int,
        codebook_size: int,
        code_dim: int,
        *,
        shared: bool = False,
        update: str = "ema",
        decay: float = 0.99,
        restart_below: float = 0.03,
        rate_penalty: float = 0.0,
        count_decay: float = 0.99,
    ):
        super().__init__()
        if update not in CODEBOOK_UPDATES:
            raise ValueError(f"unknown codebook update {update!r}: choose one of {', '.join(CODEBOOK_UPDATES)}")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the EMA decay must lie in (0, 1), got {decay}")
        if min(positions, codebook_size, code_dim) < 1:
            raise ValueError(
                f"positions, codebook size and code dimension must be >= 1, got {positions}, {codebook_size}, "
                f"{code_dim}"
            )
        self.positions, self.size, self.dim = positions, codebook_size, code_dim
        if rate_penalty < 0:
            raise ValueError(f"the rate penalty λ must be >= 0, got {rate_penalty}")
        self.update, self.decay, self.restart_below = update, decay, restart_below
        self.rate_penalty, self.count_decay = rate_penalty, count_decay
        books = 1 if shared else positions
        initial = torch.randn(books, codebook_size, code_dim)
        if update == "ema":
            self.register_buffer("codebook", initial)
            self.register_buffer("ema_sum", initial.clone())
        else:
            self.codebook = nn.Parameter(initial)
        # running count of assignments per codeword: the EMA codebook's denominator, and what finds dead codewords
        self.register_buffer("ema_count", torch.ones(books, codebook_size))
        self.register_buffer("initialised", torch.tensor(False))
        # the entropy model: running counts of each position's codes (one pseudo-count each to start, uniform)
        self.register_buffer("code_counts", torch.ones(positions, codebook_size))

    def probabilities(self, dtype=None) -> torch.Tensor:
        """π (M, K): each position's running code counts plus ``COUNT_FLOOR`` pseudo-counts, normalised. The floor
        bounds a code's cost (counts of a codeword a position stopped using decay towards 0 by 1% a step) at about
        log(batch / COUNT_FLOOR) nats."""
        counts = self.code_counts.to(dtype or self.code_counts.dtype) + COUNT_FLOOR
        return counts / counts.sum(-1, keepdim=True)

    def log_probabilities(self) -> torch.Tensor:
        """log π (M, K)."""
        return self.probabilities().log()

    def assign(self, z: torch.Tensor) -> torch.Tensor:
        """The code of z (..., M, D): nearest codeword, or the entropy-constrained cell when rate_penalty > 0."""
        penalty = -self.rate_penalty * self.log_probabilities() if self.rate_penalty > 0 else None
        return nearest(z, self.codebook, penalty)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.training and torch.is_grad_enabled() and not self._is_codebook_draw(z):
            self._learn(z.detach())
        index = self.assign(z)
        codewords = lookup(index, self.codebook)
        return _StraightThrough.apply(z, codewords), codewords, index

    @torch.no_grad()
    def _is_codebook_draw(self, z: torch.Tensor) -> bool:
        """True for a draw from the codebook prior (every value a codeword exactly: the model run forward from its
        prior, as a data critic does), which must not move the codebook or the entropy model; encodings never are."""
        return torch.equal(z, lookup(self.assign(z), self.codebook))

    @torch.no_grad()
    def _learn(self, z: torch.Tensor) -> None:
        flat = z.reshape(-1, self.positions, self.dim)  # (n, M, D)
        books = self.codebook.shape[0]
        per_book = flat.transpose(0, 1).reshape(books, -1, self.dim)  # (books, n', D)
        if not bool(self.initialised):
            self._restart(per_book, torch.ones(books, self.size, dtype=torch.bool, device=z.device))
            self.initialised.fill_(True)
        codes = self.assign(flat)  # (n, M)
        counts = torch.nn.functional.one_hot(codes, self.size).sum(0).to(self.code_counts.dtype)
        self.code_counts.mul_(self.count_decay).add_(_all_reduced(counts), alpha=1 - self.count_decay)
        index = codes.transpose(0, 1).reshape(books, -1)  # (books, n'), ordered as per_book
        one_hot = torch.nn.functional.one_hot(index, self.size).to(z.dtype)  # (books, n', K)
        self.ema_count.mul_(self.decay).add_(_all_reduced(one_hot.sum(1)), alpha=1 - self.decay)
        if self.update == "ema":
            total = _all_reduced(torch.bmm(one_hot.transpose(1, 2), per_book))
            self.ema_sum.mul_(self.decay).add_(total, alpha=1 - self.decay)
            self.codebook.copy_(self.ema_sum / self.ema_count.clamp_min(1e-5).unsqueeze(-1))
        self._restart(per_book, self.ema_count < self.restart_below)

    @torch.no_grad()
    def _restart(self, per_book: torch.Tensor, dead: torch.Tensor) -> None:
        """Move the ``dead`` codewords (books, K) onto random encodings of the batch (a little jittered, so two
        restarts on one encoding can separate), and give them a running count of 1."""
        if not bool(dead.any()):
            return
        for b in range(dead.shape[0]):
            slots = dead[b].nonzero().squeeze(-1)
            if not len(slots):
                continue
            picks = torch.randint(per_book.shape[1], (len(slots),), device=per_book.device)
            fresh = per_book[b, picks] + 1e-3 * torch.randn(len(slots), self.dim, device=per_book.device)
            self.codebook.data[b, slots] = fresh
            self.ema_count[b, slots] = 1.0
            # the entropy model's guess for a restarted codeword: an average one (its old count has decayed to
            # nothing, and would make every code it now takes cost many nats)
            rows = slice(None) if dead.shape[0] == 1 else slice(b, b + 1)
            self.code_counts[rows, slots] = self.code_counts[rows].mean(-1, keepdim=True)
            if self.update == "ema":
                self.ema_sum[b, slots] = fresh
        _broadcast(self.codebook.data)
        _broadcast(self.ema_count)
        _broadcast(self.code_counts)
        if self.update == "ema":
            _broadcast(self.ema_sum)


class _StraightThrough(torch.autograd.Function):
    """Forward: the codewords exactly (z + sg[c - z] is c only up to rounding, and the decoder must see what the
    decompressor sees). Backward: the gradient goes to z unchanged, none to the codewords."""

    @staticmethod
    def forward(ctx, z, codewords):
        return codewords.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _all_reduced(tensor: torch.Tensor) -> torch.Tensor:
    """Summed over the processes of a data-parallel run (every rank's codebook sees every rank's batch)."""
    import torch.distributed as td

    if current().parallel:
        td.all_reduce(tensor)
    return tensor


def _broadcast(tensor: torch.Tensor) -> None:
    """Rank 0's restarts win, so the processes' codebooks stay equal."""
    import torch.distributed as td

    if current().parallel:
        td.broadcast(tensor, 0)
