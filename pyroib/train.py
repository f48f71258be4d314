"""``fit``: SVI with a plain ``torch.optim`` loop over the model's and guide's parameters.

Why not ``pyro.infer.SVI``: it builds one optimiser per tensor, trains only parameters registered in Pyro's global
parameter store, and syncs host and device per site each step (``torch_item`` in pyro/infer/trace_elbo.py). Here
one optimiser (fused Adam, on the CPU and on CUDA) sees every parameter of the model, guide and prior; the
objective's loss stays on the device between logging points.

Each epoch: one pass over the training split in random minibatches (the data plate gets the dataset indices), an
evaluation on the validation split with β = 1, then one line of ``metrics.jsonl`` and an atomic checkpoint holding
model, guide, optimiser, objective (critics and their optimisers), step, epoch, the batch order's generator and the
torch RNG states. Resuming restores all of it (and drops log lines past the checkpoint's epoch), so on the CPU a
resumed run equals the uninterrupted one bit for bit. A non-finite loss stops training with a message; the last good
checkpoint stays untouched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from tqdm import tqdm

from .architectures import resolve
from .checkpoint import (
    append_jsonl,
    load_checkpoint,
    read_jsonl,
    remove_stale_temporaries,
    save_checkpoint,
    truncate_jsonl,
    write_json,
)
from .data import BatchIterator, DataSplits, as_images
from .distributed import (
    ProcessLost,
    any_process,
    average_gradients,
    barrier,
    broadcast_weights,
    global_batch_terms,
    join,
    leave,
    total,
)
from .evaluate import split_terms
from .handlers import bottleneck, validate_weights
from .objectives.enumeration import is_annotated
from .program import ProgramError, check_traces, file_sha256, trace_pair
from .run import (
    BEST_FILE,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    PROGRAM_FILE,
    RunSpec,
    build,
    initialise_pseudo_inputs,
    program_of,
    read_spec,
    resolve_device,
    restore_weights,
    warm_start,
)
from .schedules import Schedule

# a resumed run may train longer, move to another device, or continue at another learning rate or gradient clip
# (the usual remedies in a long run: a last phase at a lower rate, a clip after loss spikes); each epoch's metrics
# row records the learning rate and clip it used
OPTIMISER_SETTINGS = {"lr", "grad_clip"}
RESUMABLE_CHANGES = {"epochs", "device", "processes"} | OPTIMISER_SETTINGS


# a step whose per-point loss exceeds this multiple of the first step's (at least 1 nat) has diverged: an
# optimiser that blows the loss up by four orders of magnitude is not recovering, and a finite loss of 1e30 nats
# would otherwise train on and overwrite the checkpoint with weights that are useless
EXPLOSION_FACTOR = 1e4


FUSED_ADAM_DEVICES = ("cpu", "cuda")


# steps whose detached values are kept before they are summed (about 15 scalar tensors a step)
FOLD_STEPS = 1024


class TrainingDiverged(RuntimeError):
    pass


def per_site(spec: RunSpec) -> bool:
    """Whether β differs between latent sites (a {site: β} dict, or a schedule on some sites only)."""
    return isinstance(spec.beta, Mapping) or spec.schedule_sites is not None


def make_schedule(spec: RunSpec, steps_per_epoch: int) -> Schedule:
    """The schedule of β; with per-site β it yields the factor each scheduled site's β is multiplied by."""

    def steps(epochs: float) -> int:
        return max(1, round(epochs * steps_per_epoch))

    if per_site(spec) and spec.schedule == "capacity":
        raise ValueError(
            "the capacity schedule controls the total rate with one γ: it cannot be combined with "
            "per-site --beta or --schedule-sites"
        )
    _refuse_options_of_other_schedules(spec)
    return Schedule(
        spec.schedule,
        1.0 if per_site(spec) else spec.beta,
        warmup_steps=steps(spec.warmup_epochs),
        cycle_steps=steps(spec.cycle_epochs),
        ratio=spec.cycle_ratio,
        capacity_max=spec.capacity_max,
        capacity_steps=steps(spec.capacity_epochs),
    )


SCHEDULE_OPTIONS = {
    "warmup_epochs": "linear",
    "cycle_epochs": "cyclical",
    "cycle_ratio": "cyclical",
    "capacity_max": "capacity",
    "capacity_epochs": "capacity",
}


def _refuse_options_of_other_schedules(spec: RunSpec) -> None:
    """An option of a schedule the run does not follow would be ignored: --warmup-epochs 15 under the constant
    schedule trains at full β from the first step, which is not what its user asked for."""
    defaults = {f.name: f.default for f in dataclasses.fields(RunSpec)}
    for field, schedule in SCHEDULE_OPTIONS.items():
        if spec.schedule != schedule and getattr(spec, field) != defaults[field]:
            flag = "--" + field.replace("_", "-")
            raise ValueError(
                f"{flag} belongs to the {schedule} schedule, but this run's schedule is {spec.schedule}: add "
                f"--schedule {schedule}, or leave {flag} out (it would be ignored)"
            )


def site_betas(spec: RunSpec, latent_sites: list[str]):
    """A function of the schedule's output giving what the bottleneck handlers take: one β, or {site: β} over every
    latent site (sites a per-site ``--beta`` leaves out keep 1; sites outside ``--schedule-sites`` keep their β)."""
    if not per_site(spec):
        return lambda factor: factor
    base = {
        site: float(spec.beta.get(site, 1.0)) if isinstance(spec.beta, Mapping) else float(spec.beta)
        for site in latent_sites
    }
    scheduled = set(spec.schedule_sites or latent_sites)
    return lambda factor: {site: factor * b if site in scheduled else b for site, b in base.items()}


def _parameters(*modules):
    seen, params = set(), []
    for module in modules:
        for p in module.parameters():
            if id(p) not in seen and p.requires_grad:
                seen.add(id(p))
                params.append(p)
    return params


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def _check_resume(spec: RunSpec, out: Path) -> None:
    stored = read_spec(out)
    old, new = stored.to_json(), spec.to_json()
    for settings in (old, new):  # an option left at None is its default, whether or not the run recorded it
        settings["objective_options"] = {k: v for k, v in settings["objective_options"].items() if v is not None}
    # the warm start shaped only the first epoch's weights, so a resume may leave --init-from out
    changed = sorted(
        k
        for k in old
        if old[k] != new.get(k) and k not in RESUMABLE_CHANGES and not (k == "init_from" and new.get(k) is None)
    )
    if "model" in changed:
        raise ValueError(
            f"--resume: {out} was trained with --model {old['model']}, not {new['model']}; pass the same --model"
        )
    if changed:
        allowed = ", ".join("--" + k.replace("_", "-") for k in sorted(RESUMABLE_CHANGES))
        raise ValueError(
            f"--resume: {out} was trained with other settings ({', '.join(changed)}); resuming may "
            f"change only {allowed}. Rerun with the original flags or use another --out"
        )


def complete_spec(spec: RunSpec, splits: DataSplits, config_cls) -> RunSpec:
    """Fill the model config's dataset-given fields (data_shape, n_classes) from the data, or check them."""
    fields = {f.name for f in dataclasses.fields(config_cls)}
    given = {"data_shape": list(splits.data_shape), "n_classes": splits.n_classes}
    config = dict(spec.model_config)
    for name, value in given.items():
        if name not in fields:
            continue
        current = config.get(name)
        if isinstance(current, (tuple, list)):
            current = list(current)
        if current is not None and current != value:
            raise ValueError(
                f"the model config says {name}={config[name]} but {spec.dataset} has {name}={value}; "
                f"leave {name} out of model_config and pyroib fills it from the data"
            )
        config[name] = value
    return dataclasses.replace(spec, model_config=config)


def _check_model_file(spec: RunSpec, stored: RunSpec, out: Path) -> None:
    """A resumed run of a user's model file continues only the file it started from (compared by content)."""
    given = Path(spec.model)
    if not given.is_file():
        raise ValueError(
            f"--resume: {out} was trained from the model file {stored.model}, not --model {spec.model}; pass "
            f"--model {out / PROGRAM_FILE} (the run's copy of it) to resume"
        )
    if file_sha256(given) != stored.model_sha256:
        raise ValueError(
            f"--resume: {given} has changed since {out} was started (its sha256 differs from the one in "
            f"{out / CONFIG_FILE}); the run continues from its own copy {out / PROGRAM_FILE}: pass "
            "--model with that copy, or start a new run"
        )


def _keep_program_copy(program, out: Path) -> None:
    """The bytes of the user's file, checked against the sha256 the run was built from, written atomically."""
    source = program.source.read_bytes()
    if hashlib.sha256(source).hexdigest() != program.sha256:
        raise ValueError(f"{program.source} changed while the run was starting; start it again")
    tmp = out / (PROGRAM_FILE + ".tmp")
    tmp.write_bytes(source)
    tmp.replace(out / PROGRAM_FILE)


def preflight(built, splits: DataSplits, spec: RunSpec, anchors=None) -> list[str]:
    """Trace model and guide once on the first training points, Pyro validation on, before anything trains: the
    program contract (:mod:`pyroib.program`) refused with one line, never a silently wrong run. Returns the latent
    site names."""
    n = min(spec.batch_size, splits.train.shape[0], built.capabilities.preflight_points or spec.batch_size)
    x, y = as_images(splits.train[:n]), splits.train_labels[:n]
    if splits.binarize == "dynamic":
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            x = torch.bernoulli(x)
    named = set(spec.beta) if isinstance(spec.beta, Mapping) else set()
    named |= set(spec.anchors) if isinstance(spec.anchors, Mapping) else set()
    named |= set(spec.schedule_sites or ())
    if built.objective.latent_site is not None:
        named.add(built.objective.latent_site)
    index = torch.arange(n, device=x.device)
    latent, _ = check_traces(
        built.model, built.guide, x, y, index=index, size=splits.train.shape[0], weighted_sites=named
    )
    if anchors is not None:  # one weight per dimension of every site they reach: checked before the first step
        trace_pair(*bottleneck(built.model, built.guide, 1.0, anchors), x, y, index=index, size=splits.train.shape[0])
    if is_annotated(*trace_pair(built.model, built.guide, x, y, index=index, size=splits.train.shape[0])):
        # what enumeration cannot combine with (plates, score-function sites, anchors on a marginal) shows only
        # when the objective expands the sites: once here, before anything is written
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), torch.no_grad():
            try:
                built.objective.terms(
                    *bottleneck(built.model, built.guide, 1.0, anchors), x, y, index=index, size=splits.train.shape[0]
                )
            except ValueError as error:
                raise ProgramError(f"{error} (rule 5 of the program contract)") from None
    return latent


def train(
    spec: RunSpec, out: str | Path, *, resume: bool = False, progress: bool = True, splits: DataSplits | None = None
) -> list[dict]:
    """Train the run described by ``spec`` into directory ``out``; returns the metrics rows. Under torchrun, every
    process calls this and trains its share of each batch (:mod:`pyroib.distributed`); rank 0 writes the run."""
    processes, device = join(resolve_device(spec.device))
    try:
        return _train(spec, Path(out), resume, progress, splits, processes, device)
    except ProcessLost as error:
        raise ProcessLost(f"training stopped: {error}; {_what_is_kept(Path(out))}") from error.__cause__
    finally:
        leave(processes)


def _epoch_sums(logged, explosion_limit, device) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """From each step's (loss, values, batch size): every value summed over the epoch's points (float64), whether a
    loss was NaN or infinite, and whether a per-point loss exceeded the explosion limit."""
    if not logged:
        false = torch.zeros((), dtype=torch.bool, device=device)
        return {}, false, false
    losses = torch.stack([loss.reshape(()) for loss, _, _ in logged])
    sizes = torch.tensor([size for _, _, size in logged], dtype=torch.float64, device=losses.device)
    columns: dict[str, list[torch.Tensor]] = {}
    weights: dict[str, list[int]] = {}
    for i, (_, values, _) in enumerate(logged):
        for k, v in values.items():
            columns.setdefault(k, []).append(v.detach().reshape(()))
            weights.setdefault(k, []).append(i)
    sums = {k: (torch.stack(v).double() * sizes[weights[k]]).sum() for k, v in columns.items()}
    per_point = torch.stack(columns["loss"])
    return sums, ~torch.isfinite(losses).all(), (per_point > explosion_limit).any()


def _fold(folded, part):
    """Two (sums, nonfinite, exploded) of parts of an epoch as one."""
    if folded is None:
        return part
    sums = dict(folded[0])
    for k, v in part[0].items():
        sums[k] = sums[k] + v if k in sums else v
    return sums, folded[1] | part[1], folded[2] | part[2]


def _what_is_kept(out: Path) -> str:
    try:
        epoch = load_checkpoint(out / CHECKPOINT_FILE)["epoch"]
    except (OSError, ValueError, KeyError):
        return f"no checkpoint was written in {out}"
    return (
        f"the checkpoint of epoch {epoch} in {out} is whole: resume it (pyroib train --resume, or the same sweep "
        "command again), with any number of processes"
    )


def _train(spec, out, resume, progress, splits, processes, device) -> list[dict]:
    validate_weights(spec.beta, spec.anchors, spec.model_config.get("latent_dim"))
    if spec.schedule_sites is not None and not spec.schedule_sites:
        raise ValueError("--schedule-sites names no site; leave it out to schedule every latent site's β")
    if not (0 < spec.lr < math.inf):
        raise ValueError(f"--lr must be a positive finite learning rate, got {spec.lr}: at 0 nothing trains")
    if spec.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {spec.epochs}")
    if spec.batch_terms not in ("local", "global"):
        raise ValueError(f"--batch-terms must be local or global, got {spec.batch_terms!r}")
    if spec.grad_clip is not None and not (0 < spec.grad_clip < math.inf):
        raise ValueError(f"--grad-clip must be a positive finite gradient norm, got {spec.grad_clip}")
    if resume and not (out / CHECKPOINT_FILE).is_file():
        raise FileNotFoundError(f"--resume: no checkpoint in {out}; start the run without --resume")
    if not resume and ((out / CHECKPOINT_FILE).exists() or (out / METRICS_FILE).exists()):
        raise FileExistsError(
            f"{out} already holds a run; pass --resume to continue it, or choose a new --out (nothing was overwritten)"
        )
    barrier(processes)  # every process has seen the directory as it was before rank 0 writes to it
    progress = progress and processes.main
    if splits is None:
        from .data import load_spec_dataset

        splits = load_spec_dataset(spec, device)
    program = program_of(read_spec(out), out) if resume else resolve(spec.model)
    if program.source is not None and not resume:
        spec = dataclasses.replace(spec, model=str(program.source), model_sha256=program.sha256)
    elif program.source is not None:
        _check_model_file(spec, read_spec(out), out)
        spec = dataclasses.replace(spec, model=read_spec(out).model, model_sha256=program.sha256)
    spec = dataclasses.replace(complete_spec(spec, splits, program.Config), processes=processes.world)
    if resume:
        _check_resume(spec, out)
        spec = dataclasses.replace(spec, init_from=read_spec(out).init_from)
    torch.manual_seed(spec.seed)
    built = build(spec, device, program)
    model, guide, objective = built.model, built.guide, built.objective
    if not resume:
        initialise_pseudo_inputs(built, splits.train)
        if spec.init_from is not None:
            summary = warm_start(built, spec.init_from)
            if progress:
                tqdm.write(
                    f"initialised {len(summary['loaded'])} weights from {spec.init_from}"
                    + (f"; kept at initialisation: {', '.join(summary['kept'])}" if summary["kept"] else "")
                    + (f"; not used: {', '.join(summary['ignored'])}" if summary["ignored"] else "")
                )
    if built.capabilities.check_data:
        # a data set kept as bytes is binary by construction: a sample of it stands for the whole
        train = splits.train if splits.train.is_floating_point() else as_images(splits.train[:10_000])
        model.check_data(train, splits.binarize)
    batches = BatchIterator(
        splits,
        spec.batch_size,
        torch.Generator().manual_seed(spec.seed),
        drop_last=objective.min_batch_size > 1,
        rank=processes.rank,
        world=processes.world,
    )
    schedule = make_schedule(spec, len(batches))
    anchors = validate_weights(spec.beta, spec.anchors, getattr(built.config, "latent_dim", None))
    latent_sites = preflight(built, splits, spec, anchors)
    betas = site_betas(spec, latent_sites)
    parameters = _parameters(model, guide)
    # fused Adam updates all parameters in one kernel: on the CPU too since torch 2.4 (a 5.0 against 6.5 ms step
    # measured for a 784-400-20 VAE at batch 128), with the same state_dict, so checkpoints and resume are unchanged
    optimizer = torch.optim.Adam(parameters, lr=spec.lr, fused=device.type in FUSED_ADAM_DEVICES)
    if processes.main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)  # a killed run's half-written temporaries; the files they replace are whole
    epoch = step = 0
    explosion_limit = None
    best_elbo = -math.inf
    if resume:
        state = load_checkpoint(out / CHECKPOINT_FILE, map_location=device)
        restore_weights(built, state, out / CHECKPOINT_FILE)
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (KeyError, ValueError, RuntimeError) as error:
            raise ValueError(f"{out / CHECKPOINT_FILE}: its optimiser state does not fit this run ({error})") from None
        for group in optimizer.param_groups:
            group["lr"] = spec.lr
        epoch, step = state["epoch"], state["step"]
        if state.get("explosion_limit") is not None:  # the first step's bound, kept so a resume judges alike
            explosion_limit = torch.tensor(state["explosion_limit"], device=device)
        batches.generator.set_state(state["batch_generator"])
        _set_rng_state(state["rng"], device)
        if processes.main:
            truncate_jsonl(out / METRICS_FILE, lambda row: row.get("epoch", 0) <= epoch)
        if (out / BEST_FILE).is_file():
            best = load_checkpoint(out / BEST_FILE)
            # a kill between writing best.pt and checkpoint.pt leaves a best epoch the resumed run will redo
            best_elbo = best["val_elbo"] if best["epoch"] <= epoch else -math.inf
    if processes.main:
        if program.source is not None and not resume:
            _keep_program_copy(program, out)
        write_json(out / CONFIG_FILE, spec.to_json())
    broadcast_weights(processes, [model, guide])
    if processes.parallel and processes.rank > 0:  # the other processes draw their own noise
        torch.manual_seed(spec.seed + 104_729 * processes.rank + step)

    n_train = splits.train.shape[0]
    gather = processes.parallel and spec.batch_terms == "global"
    # an objective that does not trace every latent site (the diffusion estimator) takes β from the loop itself
    weighs_itself = getattr(objective, "weighs_itself", False)
    if weighs_itself and (anchors is not None or spec.schedule == "capacity"):
        raise ValueError(
            f"{type(objective).__name__} weighs its rate terms itself: it takes --beta and its schedules, not "
            "--anchors or the capacity schedule"
        )
    # the surrogate is N times the per-data-point loss, so the clip applies to N times the per-point gradient norm
    max_norm = None if spec.grad_clip is None else spec.grad_clip * n_train
    for epoch in range(epoch + 1, spec.epochs + 1):
        model.train()
        guide.train()
        # each step's detached values, summed once at the end of the epoch: per-step accumulation cost ~0.1 ms of
        # small tensor operations per step, a tenth of pyroib's cost over a hand-written step at batch 32
        logged: list[tuple[torch.Tensor, dict[str, torch.Tensor], int]] = []
        folded = None
        clipped = torch.zeros((), dtype=torch.long, device=device)
        grad_norms = torch.zeros(2, device=device)  # sum and max of the per-point norm, kept on the device: no sync
        seen = 0
        started = time.perf_counter()
        bar = tqdm(batches, desc=f"epoch {epoch}/{spec.epochs}", leave=False, disable=not progress, mininterval=0.5)
        for i, (x, y, index) in enumerate(bar):
            weights = schedule(step)
            with global_batch_terms(gather):
                if weighs_itself:
                    terms = objective.terms(
                        model, guide, x, y, index=index, size=n_train, per_dimension=False, beta=betas(weights.beta)
                    )
                else:
                    m, g = bottleneck(model, guide, betas(weights.beta), anchors, weights.capacity)
                    terms = objective.terms(m, g, x, y, index=index, size=n_train, per_dimension=False)
            optimizer.zero_grad(set_to_none=True)
            terms.surrogate.backward()
            average_gradients(processes, parameters)
            if max_norm is not None:
                norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm).detach()
                clipped += norm > max_norm
                per_point = norm / n_train
                grad_norms[0] += per_point
                grad_norms[1] = torch.maximum(grad_norms[1], per_point)
            optimizer.step()
            with global_batch_terms(gather):
                objective.auxiliary_step(terms)
            step += 1
            if explosion_limit is None:  # set on the run's first step: the loss of the initial weights
                explosion_limit = EXPLOSION_FACTOR * terms.values["loss"].detach().abs().clamp_min(1.0)
            logged.append((terms.loss, terms.values, x.shape[0]))
            if len(logged) == FOLD_STEPS:  # a long epoch keeps a bounded list of small tensors
                folded = _fold(folded, _epoch_sums(logged, explosion_limit, device))
                logged = []
            seen += x.shape[0]
            if progress and (i % 20 == 0):
                bar.set_postfix(
                    loss=f"{float(terms.values['loss']):.2f}",
                    rate=f"{float(terms.values['rate']):.2f}",
                    distortion=f"{float(terms.values['distortion']):.2f}",
                    beta=f"{weights.beta:.3g}",
                )
        sums, nonfinite, exploded = _fold(folded, _epoch_sums(logged, explosion_limit, device))
        del logged
        nonfinite, exploded = any_process(processes, nonfinite), any_process(processes, exploded)
        stopped = bool(nonfinite) or bool(exploded)  # waits for the device: the epoch's work is done
        train_seconds = time.perf_counter() - started
        if stopped:
            what = (
                "became NaN or infinite"
                if bool(nonfinite)
                else f"exceeded {EXPLOSION_FACTOR:.0e} times its value at the start "
                f"({float(explosion_limit):.4g} nats per point)"
            )
            kept = (
                f"the last good checkpoint (epoch {epoch - 1}) is kept in {out}"
                if epoch > 1
                else "no checkpoint was written"
            )
            raise TrainingDiverged(
                f"training diverged in epoch {epoch}: the loss {what}; {kept}. Lower --lr or --beta, or check the data"
            )
        model.eval()
        guide.eval()
        val_x, val_y = splits.split("val")
        val, val_kl = split_terms(model, guide, objective, val_x, val_y, processes=processes)
        if processes.parallel:  # means over every process's share of the epoch
            sums = total(processes, {**sums, "points seen": torch.tensor(float(seen), device=device)})
            seen_everywhere = float(sums.pop("points seen"))
            train_means = {k: float(v) / seen_everywhere for k, v in sums.items()}
        else:
            train_means = {k: float(v) / n_train for k, v in sums.items()}
        weights = schedule(step - 1)  # the weights of the epoch's last step
        row = {
            "epoch": epoch,
            "step": step,
            "lr": spec.lr,
            "grad_clip": spec.grad_clip,
            "clipped_steps": int(clipped),
            # gradient norms per data point, the scale of --grad-clip (measured only where the clip computes them)
            **(
                {"grad_norm_mean": float(grad_norms[0]) / len(batches), "grad_norm_max": float(grad_norms[1])}
                if max_norm is not None
                else {}
            ),
            "beta": weights.beta,
            **({f"beta/{k}": v for k, v in betas(weights.beta).items()} if per_site(spec) else {}),
            "capacity": None if weights.capacity is None else weights.capacity[1],
            "train_loss": train_means.pop("loss"),
            "train_elbo": train_means.pop("elbo"),
            "train_rate": train_means.pop("rate"),
            "train_distortion": train_means.pop("distortion"),
            **{f"train_{k}": v for k, v in train_means.items()},
            "val_elbo": val["elbo"],
            "val_rate": val["rate"],
            "val_distortion": val["distortion"],
            **{f"val_{k}": v for k, v in val.items() if k not in ("elbo", "rate", "distortion", "loss")},
            "val_kl_per_dim": val_kl,
            "train_seconds": train_seconds,  # the training pass alone, without the validation pass
            "seconds": time.perf_counter() - started,
        }
        if not math.isfinite(row["val_elbo"]):
            raise TrainingDiverged(
                f"validation ELBO is not finite after epoch {epoch}; the last good checkpoint "
                f"(epoch {epoch - 1}) is kept in {out}"
            )
        trained = {
            "model": model.state_dict(),
            "guide": guide.state_dict(),
            "objective": objective.state_dict(),
            "epoch": epoch,
        }
        if row["val_elbo"] > best_elbo:
            best_elbo = row["val_elbo"]
            if processes.main:
                save_checkpoint({**trained, "val_elbo": best_elbo}, out / BEST_FILE)
        if not processes.main:
            continue
        # the row goes to the log before the checkpoint: a kill between the two then leaves a row the resumed run
        # drops and writes again (it redoes that epoch), where the other order lost the row for good (found by
        # tests/test_faults.py)
        append_jsonl(out / METRICS_FILE, row)
        save_checkpoint(
            {
                **trained,
                "optimizer": optimizer.state_dict(),
                "step": step,
                "batch_generator": batches.generator.get_state(),
                "explosion_limit": None if explosion_limit is None else float(explosion_limit),
                "rng": _rng_state(device),
            },
            out / CHECKPOINT_FILE,
        )
        if progress:
            tqdm.write(
                f"epoch {epoch}: train loss {row['train_loss']:.3f}  val ELBO {row['val_elbo']:.3f}  "
                f"rate {row['val_rate']:.3f}  distortion {row['val_distortion']:.3f}  β {row['beta']:.3g} "
                f"({row['seconds']:.1f} s)"
            )
    barrier(processes)
    return read_jsonl(out / METRICS_FILE)
