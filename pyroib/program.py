"""The program contract: what pyroib asks of a model/guide pair, checked once when a program is resolved and once
more, by tracing, before a run's first step.

**Required** of a program file (``models/NAME.py`` + ``guides/NAME.py``, or one ``PATH.py`` holding all three):

1. ``Config``: a frozen dataclass of sizes. Fields named ``data_shape`` and ``n_classes``, where the story has
   them, are filled from the data set; every other field becomes a ``pyroib train`` flag.
2. ``Model(config)`` and ``Guide(config)``: ``nn.Module`` (or ``PyroModule``) subclasses whose ``forward(x,
   y=None, index=None, size=None)`` is the program. ``index`` holds the minibatch's data-set indices and ``size``
   the data set's size N; evaluation calls with neither.
3. **The data plate**: every sample site lies inside ``pyro.plate("data", size or x.shape[0], subsample=index)``
   (:func:`pyroib.plates.data_plate`), so that each site is scaled by N/B and batch-level estimators know N, and an
   evaluation call without ``index`` and ``size`` covers its batch.
4. **Matching latent sites**: the guide samples exactly the model's unobserved sites, by name.
5. **Enumeration** (``config_enumerate``, ``infer={"enumerate": "parallel"}``) sums a discrete site out exactly
   (:mod:`pyroib.objectives.enumeration`): in the guide (weighted by q) or in the model only (marginalised inside
   log p; the one kind of model latent the guide may lack). Sequential enumeration is for guide sites.
6. Sites broadcast over leading dimensions left of the data plate: importance-weighted evaluation adds a plate of
   particles there.
7. **Factors** (``pyro.factor(name, log_factor)``) belong in the model. Each is a term of its own, ``factor/<name>``
   = -log_factor in nats per data point: it enters the loss, and is kept out of distortion, rate, the ELBO and the
   importance-weighted likelihood (a training penalty such as a vector quantiser's commitment cost is not part of
   p(x)).

**Optional capabilities**, declared by what the classes define and read once into :class:`Capabilities`:

* ``Model.__init__(config, prior=None)``: the top latent's prior is injected, so ``--prior`` can replace it, and
  full-data marginal KLs are measured against it. ``Config.latent_dim`` then sizes the prior.
* ``Guide.encode(x) -> (loc, scale)`` of the Gaussian q(z|x) at the latent site: full-data information terms,
  active units, the aggregate prior, the VampPrior, report images.
* ``Model.decode(z) -> E[x|z]``: samples, reconstructions, traversals.
* ``Model.metrics(guide, x, y) -> dict``: extra evaluation numbers (nats).
* ``Model.check_data(x, binarize)``: refuses data its likelihood cannot score.
* ``Model.observes_inputs = False``: x only conditions the guide (deep VIB); no -log p(x) is estimated.
* ``Model.latent_site = "name"``: the site the information objectives read when the program has several.
* ``Model.importance_sampling = False``: evaluation reports the bound without an importance-weighted estimate (a
  program of T image-sized latent sites, the diffusion model, where K particles of all of them would not fit).
* ``Model.sample_images(n, steps=None, generator=None)``: images drawn from the model by its own sampler (ancestral
  sampling of a diffusion, decoded entropy-model codes), for ``pyroib sample`` and the report.
* ``Model.preflight_points = n``: the check before the first step traces n points instead of a whole minibatch (a
  program whose trace costs T network evaluations).

Anything missing makes the commands that need it refuse with a message naming the capability; nothing falls back
to a default silently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import inspect
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from .handlers import WeightError
from .plates import DATA_PLATE


def not_broadcasting(error: Exception) -> str:
    """The note for rule 6: what a program that cannot take a particle plate gets instead of per-point estimates."""
    detail = " ".join(str(error).split())[:200]
    return (
        "importance sampling needs the program to broadcast over a leading particle dimension (rule 6 of the program "
        f"contract: reshape by the sample's own shape, not x.shape); the error was: {detail}"
    )


class ProgramError(ValueError):
    """A model/guide pair breaks the program contract; the message names the rule and the fix."""


@dataclass(frozen=True)
class Capabilities:
    takes_prior: bool = False
    encode: bool = False
    decode: bool = False
    metrics: bool = False
    check_data: bool = False
    observes_inputs: bool = True
    latent_site: str | None = None
    importance_sampling: bool = True
    preflight_points: int | None = None
    sample_images: bool = False

    def require(self, name: str, purpose: str) -> None:
        if not getattr(self, name):
            raise ProgramError(f"{purpose} needs {_CAPABILITY_TEXT[name]}, which this program does not define")


_CAPABILITY_TEXT = {
    "takes_prior": "a Model that takes prior= (Model(config, prior=None))",
    "encode": "Guide.encode(x) returning (loc, scale) of q(z | x)",
    "decode": "Model.decode(z) returning the mean of p(x | z)",
    "metrics": "Model.metrics(guide, x, y)",
    "check_data": "Model.check_data(x, binarize)",
    "observes_inputs": "a model that observes x",
    "sample_images": "Model.sample_images(n, steps=None, generator=None) returning images",
}


@dataclass(frozen=True)
class Program:
    """A resolved model/guide pair: its classes, declared capabilities and, for a user's file, its source."""

    name: str
    Config: type
    Model: type
    Guide: type
    capabilities: Capabilities
    architecture: object  # pyroib.architectures.Architecture: objective class, its options, defaults
    source: Path | None = None  # the user's file this program was loaded from
    sha256: str | None = None  # of that file's bytes


def _accepts(fn, *args, **kwargs) -> bool:
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return False
    return True


def _callable_attribute(cls, name: str) -> bool:
    return callable(inspect.getattr_static(cls, name, None))


def check_classes(where: str, config_cls, model_cls, guide_cls) -> Capabilities:
    """Rules 1-2 on the classes alone; returns the declared capabilities."""
    if not (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)):
        raise ProgramError(f"{where}: Config must be a dataclass (rule 1: @dataclass(frozen=True) class Config)")
    from torch import nn

    for role, cls in (("Model", model_cls), ("Guide", guide_cls)):
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ProgramError(
                f"{where}: {role} must be an nn.Module (or PyroModule) subclass whose forward(x, y=None, "
                "index=None, size=None) is the program (rule 2): pyroib trains its parameters and moves it to "
                "the device"
            )
        forward = cls.forward
        # training calls forward(x, y, index=..., size=...), evaluation forward(x, y) and forward(x)
        if not (_accepts(forward, None, "x", "y", index=None, size=None) and _accepts(forward, None, "x")):
            raise ProgramError(
                f"{where}: {role}.forward must accept (x, y=None, index=None, size=None) (rule 2); "
                f"it is forward{inspect.signature(forward)}"
            )
        if not _accepts(cls, "config"):
            raise ProgramError(f"{where}: {role}(config) must construct the program from its Config (rule 2)")
    latent_site = inspect.getattr_static(model_cls, "latent_site", None)
    if latent_site is not None and not isinstance(latent_site, str):
        raise ProgramError(f"{where}: Model.latent_site must be a site name (a str), got {latent_site!r}")
    observes = inspect.getattr_static(model_cls, "observes_inputs", True)
    importance = inspect.getattr_static(model_cls, "importance_sampling", True)
    preflight_points = inspect.getattr_static(model_cls, "preflight_points", None)
    if preflight_points is not None and (not isinstance(preflight_points, int) or preflight_points < 1):
        raise ProgramError(f"{where}: Model.preflight_points must be a whole number >= 1, got {preflight_points!r}")
    return Capabilities(
        takes_prior=_accepts(model_cls, "config", prior=None),
        encode=_callable_attribute(guide_cls, "encode"),
        decode=_callable_attribute(model_cls, "decode"),
        metrics=_callable_attribute(model_cls, "metrics"),
        check_data=_callable_attribute(model_cls, "check_data"),
        observes_inputs=bool(observes),
        latent_site=latent_site,
        importance_sampling=bool(importance),
        preflight_points=preflight_points,
        sample_images=_callable_attribute(model_cls, "sample_images"),
    )


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_module(path: str | Path):
    """Import a user's program file under a name unique to its content (two runs' copies never clash)."""
    path = Path(path)
    if not path.is_file():
        raise ProgramError(f"model file {path} does not exist")
    digest = file_sha256(path)
    name = f"pyroib_user_{path.stem}_{digest[:12]}"
    if name in sys.modules:
        return sys.modules[name], digest
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as error:
        del sys.modules[name]
        raise ProgramError(f"model file {path} has a syntax error at line {error.lineno}: {error.msg}") from None
    except Exception as error:  # a user's file may raise anything at import; name it and its line, no traceback
        del sys.modules[name]
        raise ProgramError(f"model file {path} failed to import{_where(error, path)}: {_one_line(error)}") from None
    return module, digest


def _where(error: Exception, path: Path) -> str:
    """`` at line N`` of the deepest frame of ``error`` in the user's file ``path``, if any."""
    lines = [f.lineno for f in traceback.extract_tb(error.__traceback__) if Path(f.filename) == Path(path)]
    return f" at line {lines[-1]}" if lines else ""


def _in_user_code(error: Exception) -> str:
    """`` (FILE, line N)`` of the deepest frame of ``error`` outside pyro, torch and pyroib: where a program's own
    bug is."""
    frames = [
        f
        for f in traceback.extract_tb(error.__traceback__)
        if not any(part in f.filename for part in ("/pyro/", "/torch/", "/pyroib/", "/contextlib.py"))
    ]
    return f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""


def _sample_sites(trace) -> dict:
    from pyro.poutine.util import site_is_subsample

    return {
        name: site for name, site in trace.nodes.items() if site["type"] == "sample" and not site_is_subsample(site)
    }


def _one_line(error: Exception) -> str:
    """The message on one line, without the shape table Pyro appends to errors raised inside a trace."""
    return " ".join(str(error).split("Trace Shapes:")[0].split())


def _check_plate(role: str, name: str, site, batch: int, size: int | None) -> None:
    frames = [f for f in site["cond_indep_stack"] if f.name == DATA_PLATE]
    if not frames:
        others = sorted({f.name for f in site["cond_indep_stack"]})
        found = f" (it is inside {', '.join(repr(o) for o in others)})" if others else ""
        raise ProgramError(
            f"{role} site {name!r} is in no plate named {DATA_PLATE!r}{found}: every sample site "
            f"must lie inside pyro.plate({DATA_PLATE!r}, size, subsample=index) (rule 3; "
            "pyroib.plates.data_plate(x, index, size) builds it), or N and the per-point scale are lost"
        )
    frame = frames[0]
    full = frame.full_size or frame.size
    if size is None and full != batch:
        raise ProgramError(
            f"{role} site {name!r}: called as evaluation calls it, forward(x, y) without index and size, plate "
            f"{DATA_PLATE!r} has size {full} for a batch of {batch} (rule 3): fall back to the batch, "
            f"pyro.plate({DATA_PLATE!r}, size or x.shape[0], subsample=index), or use pyroib.plates.data_plate"
        )
    if size is not None and full != size:
        raise ProgramError(
            f"{role} site {name!r}: plate {DATA_PLATE!r} has size {full} but the data set has {size} "
            f"points (rule 3): pass the data set's size and the minibatch's indices, "
            f"pyro.plate({DATA_PLATE!r}, size, subsample=index), so each site is scaled by N/B"
        )
    if frame.size != batch:
        raise ProgramError(
            f"{role} site {name!r}: plate {DATA_PLATE!r} holds {frame.size} points but the minibatch "
            f"has {batch} (rule 3): subsample the plate by the minibatch's indices (subsample=index)"
        )


def is_factor(site) -> bool:
    """A ``pyro.factor`` statement (rule 7): Pyro records it as an observed site marked auxiliary."""
    return site["type"] == "sample" and site["is_observed"] and bool(site["infer"].get("is_auxiliary"))


def trace_pair(model, guide, x, y, **kwargs):
    """(model trace, guide trace) of one call, Pyro validation on, the global RNG left as it was; a failure becomes
    one line naming where in the user's code it happened."""
    import pyro
    import torch
    from pyro import poutine

    with (
        torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []),
        pyro.validation_enabled(True),
        torch.no_grad(),
    ):
        try:
            guide_trace = poutine.trace(guide).get_trace(x, y, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y, **kwargs)
            guide_trace.compute_log_prob()
            model_trace.compute_log_prob()
        except ProgramError:
            raise
        except WeightError as error:  # the user's setting, not the program: no pointer into its code
            raise WeightError(_one_line(error)) from None
        except Exception as error:  # the program's own code raised: say what and where, in one line
            call = "forward(x, y, index=..., size=...)" if kwargs else "forward(x, y)"
            raise ProgramError(
                f"the program failed when traced as {call} with Pyro validation on{_in_user_code(error)}: "
                f"{type(error).__name__}: {_one_line(error)}"
            ) from None
    return model_trace, guide_trace


def check_traces(
    model, guide, x, y=None, index=None, size: int | None = None, weighted_sites=()
) -> tuple[list[str], list[str]]:
    """Trace guide and model once with Pyro validation on and enforce rules 3-5 of the contract.

    ``weighted_sites`` are site names that bottleneck weights or objectives were told to read (per-site β, anchors,
    ``latent_site``); each must be a latent site. Returns (latent site names, observed site names). Raises
    :class:`ProgramError` with one line naming the rule; the global RNG is left as it was.
    """
    model_trace, guide_trace = trace_pair(model, guide, x, y, index=index, size=size)
    # evaluation calls the program without index and size: its plate must then cover the batch it is given
    for role, trace in zip(("model", "guide"), trace_pair(model, guide, x, y)):
        for name, site in _sample_sites(trace).items():
            _check_plate(role, name, site, x.shape[0], None)
    model_sites, guide_sites = _sample_sites(model_trace), _sample_sites(guide_trace)
    for role, sites in (("model", model_sites), ("guide", guide_sites)):
        for name, site in sites.items():
            _check_plate(role, name, site, x.shape[0], size)
    observed = [n for n, s in model_sites.items() if s["is_observed"] and not is_factor(s)]
    # a site enumerated in the model alone is summed out there: not a latent the guide must sample
    summed = [
        n
        for n, s in model_sites.items()
        if n not in guide_sites and s["infer"].get("enumerate") and not s["is_observed"]
    ]
    for name in summed:
        if model_sites[name]["infer"]["enumerate"] != "parallel":
            raise ProgramError(
                f"model site {name!r} is marked for sequential enumeration but the guide has no site of that name; a "
                "site summed out in the model must be marked infer={'enumerate': 'parallel'} (rule 5)"
            )
    latent = [n for n, s in model_sites.items() if not s["is_observed"] and n not in summed]
    guide_factors = [n for n, s in guide_sites.items() if is_factor(s)]
    if guide_factors:
        raise ProgramError(
            f"the guide has pyro.factor site(s) {', '.join(map(repr, guide_factors))} (rule 7): a factor in the "
            "guide would enter log q and be read as rate; put training penalties in the model, where each is a term "
            "of its own"
        )
    if not observed:
        raise ProgramError(
            "the model observes nothing (no pyro.sample(..., obs=...) site): there is no distortion "
            "term to train (rule 4)"
        )
    for name, site in guide_sites.items():
        if name in observed:
            raise ProgramError(
                f"site {name!r} is observed in the model but sampled in the guide (rule 4): the "
                "guide samples latent sites only"
            )
        if name not in model_sites:
            raise ProgramError(
                f"the guide samples {name!r} but the model has no site of that name (model latent "
                f"sites: {', '.join(latent) or 'none'}); rule 4: guide and model name their latent "
                "sites alike"
            )
    missing = [n for n in latent if n not in guide_sites]
    if missing:
        discrete = [n for n in missing if not model_sites[n]["fn"].has_rsample]
        enumerate_them = (
            f", or sum the discrete one(s) ({', '.join(map(repr, discrete))}) out in the model: "
            "infer={'enumerate': 'parallel'} on their sites (rule 5)"
            if discrete
            else ""
        )
        raise ProgramError(
            f"latent site(s) {', '.join(map(repr, missing))} of the model have no site in the guide "
            f"(rule 4): they would be drawn from the prior and never inferred. Add them to the guide{enumerate_them}"
        )
    marginalised = sorted(set(weighted_sites) & set(summed))
    if marginalised:
        raise ProgramError(
            f"site(s) {', '.join(map(repr, marginalised))} named in the run's settings are summed out in the model "
            "(enumerated there, absent from the guide, rule 5): they have no rate of their own. Weight the sites that "
            "depend on them, or enumerate them in the guide too"
        )
    unknown = sorted(set(weighted_sites) - set(latent))
    if unknown:
        raise ProgramError(
            f"site(s) {', '.join(map(repr, unknown))} named in the run's settings are not latent "
            f"sites of the program; its latent sites are {', '.join(latent)}"
        )
    return latent, observed


__all__ = [
    "Capabilities",
    "DATA_PLATE",
    "Program",
    "ProgramError",
    "check_classes",
    "check_traces",
    "file_sha256",
    "is_factor",
    "load_module",
]
