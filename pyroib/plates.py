"""The data plate every pyroib program shares, so batch-level estimators can read N and the minibatch indices."""

from __future__ import annotations

import pyro
import torch

DATA_PLATE = "data"


def data_plate(x: torch.Tensor, index: torch.Tensor | None = None, size: int | None = None) -> pyro.plate:
    """``pyro.plate("data", N, subsample=index)`` over the leading dimension of ``x``.

    ``index`` holds the minibatch's dataset indices and ``size`` the dataset size N, so every site inside is scaled
    by N/B. Without them the batch is the whole dataset (evaluation, notebooks).
    """
    if index is None:
        return pyro.plate(DATA_PLATE, x.shape[0] if size is None else size, dim=-1)
    if size is None:
        raise ValueError("data_plate: pass size (the dataset size N) together with index")
    if index.shape[0] != x.shape[0]:
        raise ValueError(f"data_plate: {index.shape[0]} indices for a batch of {x.shape[0]} data points")
    return pyro.plate(DATA_PLATE, size, subsample=index, dim=-1)


def max_plate_nesting(model, guide, *args, **kwargs) -> int:
    """How many plate dimensions a program uses (one plain trace of guide and model, no gradient), so that particle
    or enumeration dimensions can go to their left. Pyro's own guess (``ELBO._guess_max_plate_nesting``) logs each
    time it runs; this one is quiet."""
    from pyro import poutine

    with torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    dims = [
        -f.dim
        for trace in (guide_trace, model_trace)
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for f in site["cond_indep_stack"]
        if f.vectorized
    ]
    return max(dims, default=0)
