"""pyroib: information-bottleneck representation learning written as Pyro programs.

The names below are the public API; each lives in the module named beside it and is imported on first use, so
``import pyroib`` stays cheap for the command line.
"""

from __future__ import annotations

import importlib

# public name -> submodule that defines it (submodule:name where the name differs)
_EXPORTS = {
    # runs: specify, train, reload, evaluate, report
    "RunSpec": "run",
    "load_run": "run",
    "fit": "train:train",  # `pyroib.train` is the module (the import system binds submodules here)
    "evaluate_run": "evaluate",
    "write_report": "report",
    "run_sweep": "sweep",
    # programs: the contract, the data plate, the bottleneck weights
    "ProgramError": "program",
    "check_traces": "program",
    "resolve": "architectures",
    "data_plate": "plates",
    "bottleneck": "handlers",
    # objectives
    "InfoELBO": "objectives",
    "TotalCorrelationELBO": "objectives",
    "MarginalKLELBO": "objectives",
    "MMDELBO": "objectives",
    "FactorVAEELBO": "objectives",
    "AdversarialELBO": "objectives",
    "BoundedIBELBO": "objectives",
    # priors
    "StandardNormal": "priors",
    "LearnedGaussian": "priors",
    "MixtureOfGaussians": "priors",
    "VampPrior": "priors",
    "FlowPrior": "priors",
    "AggregatePosterior": "priors",
    # data
    "load_dataset": "data",
    "DSprites": "dsprites",
    # discrete and hierarchical latents (disentanglement metrics: the module pyroib.disentanglement)
    "cluster_evaluation": "clustering",
    "clustering_scores": "clustering",
    # posterior inspection
    "from_run": "arviz_bridge",
    "importance_diagnostics": "diagnostics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pyroib' has no attribute {name!r}")
    module, _, attribute = _EXPORTS[name].partition(":")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attribute or name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
