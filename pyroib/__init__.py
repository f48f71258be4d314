"""pyroib: information-bottleneck representation learning written as Pyro programs.

The names below are the public API; each lives in the module named beside it and is imported on first use, so
``import pyroib`` stays cheap for the command line.
"""

from __future__ import annotations

import importlib

# public name -> module that defines it (module:name where the name differs)
_EXPORTS = {
    # runs: specify, train, reload, evaluate, report
    "RunSpec": "pyroib.run",
    "load_run": "pyroib.run",
    "fit": "pyroib.train:train",  # `pyroib.train` is the module (the import system binds submodules here)
    "evaluate_run": "pyroib.evaluate",
    "write_report": "pyroib.report",
    "run_sweep": "pyroib.sweep",
    # programs: the contract, the data plate, the bottleneck weights
    "ProgramError": "pyroib.program",
    "check_traces": "pyroib.program",
    "resolve": "pyroib.architectures",
    "data_plate": "pyroib.plates",
    "bottleneck": "pyroib.handlers",
    # objectives
    "InfoELBO": "pyroib.objectives",
    "TotalCorrelationELBO": "pyroib.objectives",
    "MarginalKLELBO": "pyroib.objectives",
    "MMDELBO": "pyroib.objectives",
    "FactorVAEELBO": "pyroib.objectives",
    "AdversarialELBO": "pyroib.objectives",
    "BoundedIBELBO": "pyroib.objectives",
    # priors
    "StandardNormal": "pyroib.priors",
    "LearnedGaussian": "pyroib.priors",
    "MixtureOfGaussians": "pyroib.priors",
    "VampPrior": "pyroib.priors",
    "FlowPrior": "pyroib.priors",
    "AggregatePosterior": "pyroib.priors",
    # data
    "load_dataset": "pyroib.data",
    # posterior inspection
    "from_run": "pyroib.arviz_bridge",
    "importance_diagnostics": "pyroib.diagnostics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pyroib' has no attribute {name!r}")
    module, _, attribute = _EXPORTS[name].partition(":")
    value = getattr(importlib.import_module(module), attribute or name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
