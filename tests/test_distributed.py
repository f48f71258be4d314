"""Data-parallel training with torchrun on two CPU processes (gloo): the same parameters as one process trained on
the concatenated batches, one run directory written by rank 0, and a resume with another number of processes."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyroib.checkpoint import load_checkpoint, read_jsonl

PROGRAM = Path(__file__).parent / "programs" / "deterministic_ae.py"
COMMON = ["--model", str(PROGRAM), "--dataset", "digits", "--binarize", "none", "--train-size", "320"]
COMMON += ["--device", "cpu", "--no-progress", "--seed", "3"]


def _pyroib(argv, processes=1):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command = [*(launcher if processes > 1 else [sys.executable]), "-m", "pyroib", *argv]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", **_env()})
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def _env():
    import os

    return {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}


def _weights(run):
    state = load_checkpoint(run / "checkpoint.pt")
    return {f"{part}.{k}": v for part in ("model", "guide") for k, v in state[part].items()}


def test_two_processes_equal_one_process_on_the_concatenated_batches(tmp_path):
    _pyroib(["train", *COMMON, "--batch-size", "16", "--epochs", "2", "--out", str(tmp_path / "two")], processes=2)
    _pyroib(["train", *COMMON, "--batch-size", "32", "--epochs", "2", "--out", str(tmp_path / "one")])
    two, one = _weights(tmp_path / "two"), _weights(tmp_path / "one")
    assert set(two) == set(one)
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
    # the logged means are over both processes' points: the same numbers as the one process's
    rows_two, rows_one = read_jsonl(tmp_path / "two" / "metrics.jsonl"), read_jsonl(tmp_path / "one" / "metrics.jsonl")
    assert len(rows_two) == 2 and [r["step"] for r in rows_two] == [r["step"] for r in rows_one] == [10, 20]
    for a, b in zip(rows_two, rows_one, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_elbo"] == pytest.approx(b["val_elbo"], rel=1e-4)
    assert json.loads((tmp_path / "two" / "config.json").read_text())["processes"] == 2


def test_a_two_process_run_resumes_in_one_process(tmp_path):
    run = tmp_path / "run"
    _pyroib(["train", *COMMON, "--batch-size", "16", "--epochs", "1", "--out", str(run)], processes=2)
    first = read_jsonl(run / "metrics.jsonl")
    before = _weights(run)
    done = _pyroib(["train", *COMMON, "--batch-size", "16", "--epochs", "2", "--out", str(run), "--resume"])
    rows = read_jsonl(run / "metrics.jsonl")
    assert rows[0] == first[0] and len(rows) == 2 and rows[1]["step"] == 10 + 20  # 320 points: 10 steps of 2 × 16
    assert json.loads((run / "config.json").read_text())["processes"] == 1
    after = _weights(run)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert "trained" in done.stdout


def test_critics_are_trained_by_two_processes_as_by_one_on_the_concatenated_batches(tmp_path):
    """BIB-AE's data critic (real images against their reconstructions) on the deterministic program: model, guide,
    critic and the critic's optimiser after 2 epochs in two processes equal one process on the global batch."""
    program = tmp_path / "critic_ae.py"
    program.write_text(
        PROGRAM.read_text()
        + "\n\nfrom pyroib.objectives import BoundedIBELBO\n\nobjective = BoundedIBELBO\n"
        + 'options = {"marginal_kl_weight": 0.0, "data_fakes": "reconstructions", "critic_width": 16, '
        + '"critic_lr": 1e-3}\n'
    )
    argv = ["train", *COMMON, "--model", str(program), "--epochs", "2"]
    _pyroib([*argv, "--batch-size", "16", "--out", str(tmp_path / "two")], processes=2)
    _pyroib([*argv, "--batch-size", "32", "--out", str(tmp_path / "one")])
    two, one = _weights(tmp_path / "two"), _weights(tmp_path / "one")
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
    critic_two, critic_one = (
        load_checkpoint(tmp_path / run / "checkpoint.pt")["objective"]["critics"]["data"] for run in ("two", "one")
    )
    for name, value in critic_one["weights"].items():
        torch.testing.assert_close(critic_two["weights"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    adam_two, adam_one = critic_two["optimizer"]["state"], critic_one["optimizer"]["state"]
    for index, state in adam_one.items():
        torch.testing.assert_close(adam_two[index]["exp_avg_sq"], state["exp_avg_sq"], rtol=1e-3, atol=1e-9)
    rows = read_jsonl(tmp_path / "two" / "metrics.jsonl")
    assert rows[-1]["train_critic_data_kl"] == pytest.approx(
        read_jsonl(tmp_path / "one" / "metrics.jsonl")[-1]["train_critic_data_kl"], rel=1e-4
    )


def test_a_torchrun_sweep_trains_each_run_in_both_processes_and_rank_0_writes_the_table(tmp_path):
    sweep = tmp_path / "sweep"
    argv = [*COMMON, "--batch-size", "16", "--epochs", "1", "--no-progress"]
    done = _pyroib(["sweep", "--beta", "0.5:2:2", *argv, "--out", str(sweep)], processes=2)
    assert done.stdout.count("swept 2 values") == 1 and done.stdout.count("β = 2: trained") == 1
    assert len((sweep / "sweep.csv").read_text().strip().splitlines()) == 1 + 2
    # each β's run is the data-parallel run: the same weights as one process on the concatenated batches
    _pyroib(["train", *COMMON, "--beta", "2", "--batch-size", "32", "--epochs", "1", "--out", str(tmp_path / "one")])
    swept, one = _weights(sweep / "beta-2"), _weights(tmp_path / "one")
    for name in one:
        torch.testing.assert_close(swept[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
    assert json.loads((sweep / "beta-2" / "config.json").read_text())["processes"] == 2


def test_a_torchrun_sweep_of_a_critic_objective_evaluates_on_rank_0_alone(tmp_path):
    """Rank 0 rebuilds the critics from each run's checkpoint to evaluate it while the others wait: nothing in that
    evaluation may wait for them (a critic built from a checkpoint once broadcast its weights there)."""
    sweep = tmp_path / "sweep"
    argv = ["--model", "factorvae", "--dataset", "digits", "--train-size", "320", "--latent-dim", "3", "--device"]
    argv += ["cpu", "--no-progress", "--batch-size", "16", "--epochs", "1", "--critic-width", "16"]
    done = _pyroib(["sweep", "--beta", "1:2:2", *argv, "--out", str(sweep)], processes=2)
    assert done.stdout.count("β = 2: trained") == 1
    rows = (sweep / "sweep.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and all(",trained," in row for row in rows[1:])


def test_a_torchrun_sweep_refuses_workers(monkeypatch, tmp_path):
    from pyroib.run import RunSpec
    from pyroib.sweep import run_sweep

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="under torchrun the K processes train each run together"):
        run_sweep(RunSpec(model="vae", dataset="digits"), [1.0, 2.0], tmp_path, workers=2)


def _free_port(monkeypatch) -> None:
    """A free local port for the spawned processes' rendezvous, in TEST_PORT."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("TEST_PORT", str(s.getsockname()[1]))


def _join(rank: int, world: int) -> None:
    """Join the gloo group of ``world`` spawned processes (nothing for one process)."""
    import os

    import torch.distributed as dist

    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["TEST_PORT"])
        dist.init_process_group("gloo", rank=rank, world_size=world)


N_POINTS, HALF = 400, 24


def _terms_on(rank, world, gather, directory):
    """TC, its neighbours and the gradients of β-TCVAE's loss on this process's half of a fixed batch of 2 × HALF
    points, with the codes held fixed (the guide conditioned on them) so that nothing is random."""

    from pyro.poutine.messenger import Messenger

    from pyroib.distributed import Processes, average_gradients, global_batch_terms
    from pyroib.guides.vae import Guide
    from pyroib.models.vae import Config, Model
    from pyroib.objectives import TotalCorrelationELBO

    _join(rank, world)
    torch.manual_seed(0)
    config = Config(data_shape=(1, 4, 4), latent_dim=3, hidden=(8,))
    model, guide = Model(config), Guide(config)
    x = torch.bernoulli(torch.rand(2 * HALF, 1, 4, 4, generator=torch.Generator().manual_seed(1)))
    z = torch.randn(2 * HALF, 3, generator=torch.Generator().manual_seed(2))
    index = torch.arange(2 * HALF)
    if world > 1:
        part = slice(rank * HALF, (rank + 1) * HALF)
        x, z, index = x[part], z[part], index[part]

    class FixedCodes(Messenger):  # the guide's draw replaced by z, the site still a latent one
        def _pyro_sample(self, msg):
            if msg["name"] == "z":
                msg["value"] = z

    fixed = FixedCodes()(guide)
    objective = TotalCorrelationELBO(tc_weight=6.0)
    with global_batch_terms(gather):
        terms = objective.terms(model, fixed, x, index=index, size=N_POINTS)
    terms.surrogate.backward()
    parameters = [*model.parameters(), *guide.parameters()]
    average_gradients(Processes(rank, world), parameters)
    if rank == 0:
        torch.save(
            {"values": {k: v.detach() for k, v in terms.values.items()}, "grads": [p.grad for p in parameters]},
            f"{directory}/{world}-{gather}.pt",
        )
    if world > 1:
        torch.distributed.destroy_process_group()


def test_global_batch_terms_equal_one_process_on_the_concatenated_batch(tmp_path, monkeypatch):
    import torch.multiprocessing as mp

    _free_port(monkeypatch)
    _terms_on(0, 1, False, tmp_path)
    mp.spawn(_terms_on, args=(2, True, tmp_path), nprocs=2)
    one, two = torch.load(tmp_path / "1-False.pt"), torch.load(tmp_path / "2-True.pt")
    for key in ("total_correlation", "index_code_mi", "marginal_kl", "dimwise_kl"):
        torch.testing.assert_close(two["values"][key], one["values"][key], rtol=1e-5, atol=1e-6, msg=key)
    # the averaged gradients of the two halves' losses are the one process's gradient on the whole batch
    for a, b in zip(two["grads"], one["grads"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # and with local batch terms they are not: each half's TC is estimated from its own 24 points
    monkeypatch.setenv("TEST_PORT", str(int(__import__("os").environ["TEST_PORT"]) + 1))
    mp.spawn(_terms_on, args=(2, False, tmp_path), nprocs=2)
    local = torch.load(tmp_path / "2-False.pt")
    assert not torch.allclose(local["values"]["total_correlation"], one["values"]["total_correlation"], rtol=1e-3)


def test_a_process_that_dies_stops_the_run_and_the_last_checkpoint_resumes(tmp_path):
    """Process 1 is killed in its 15th step (epoch 2): torchrun stops the run, the epoch-1 checkpoint written by
    rank 0 stays whole, and the run resumes in one process."""
    head = "    def forward(self, x, y=None, index=None, size=None):\n"
    kill = (
        "        if index is not None and os.environ.get('RANK') == '1':\n"
        "            Model.calls += 1\n"
        "            if Model.calls == 15:\n"
        "                os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    text = PROGRAM.read_text().replace(head, "    calls = 0\n\n" + head + kill, 1)  # the Model's forward
    assert "Model.calls" in text
    program = tmp_path / "dying.py"
    program.write_text("import os\nimport signal\n" + text)
    run = tmp_path / "run"
    argv = ["train", *COMMON, "--model", str(program), "--batch-size", "16", "--epochs", "3", "--out", str(run)]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    done = subprocess.run([*launcher, "-m", "pyroib", *argv], capture_output=True, text=True, timeout=300, env=_env())
    assert done.returncode != 0
    # rank 0 says what happened and what is kept, in pyroib's words rather than the backend's
    said = [line for line in done.stderr.splitlines() if line.startswith("pyroib train: error:")]
    assert said and "another training process stopped" in said[0], done.stderr[-2000:]
    assert f"the checkpoint of epoch 1 in {run} is whole" in said[0] and "--resume" in said[0]
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1] and load_checkpoint(run / "checkpoint.pt")["epoch"] == 1
    # rerun in one process (where the program kills nothing): it continues from epoch 1 to the end
    _pyroib([*argv, "--resume"])
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]


def _timestep_history(rank, world, directory):
    """Each process adds its own half of 2 × 6 (timestep, weighted term) pairs through DiffusionELBO's step."""

    from pyroib.diffusion import TimestepSampler
    from pyroib.objectives import DiffusionELBO
    from pyroib.objectives.core import Terms

    _join(rank, world)
    t = torch.tensor([2, 3, 4, 5, 2, 3, 2, 4, 5, 5, 3, 2])
    losses = torch.arange(1.0, 13.0)
    if world > 1:
        t, losses = t[rank * 6 : (rank + 1) * 6], losses[rank * 6 : (rank + 1) * 6]
    objective = DiffusionELBO(timestep_sampling="importance")
    objective._sampler = TimestepSampler(5, "importance", history=2)
    terms = Terms(surrogate=torch.zeros(()), loss=torch.zeros(()))
    terms.critic_samples["timesteps"] = (t, losses)
    objective.auxiliary_step(terms)
    torch.save(objective.state_dict()["sampler"], f"{directory}/{world}-{rank}.pt")
    if world > 1:
        torch.distributed.destroy_process_group()


def test_importance_sampled_timesteps_keep_one_history_across_processes(tmp_path, monkeypatch):
    import torch.multiprocessing as mp

    _free_port(monkeypatch)
    _timestep_history(0, 1, tmp_path)
    mp.spawn(_timestep_history, args=(2, tmp_path), nprocs=2)
    one, rank0, rank1 = (torch.load(tmp_path / name) for name in ("1-0.pt", "2-0.pt", "2-1.pt"))
    for key, value in one.items():
        assert torch.equal(rank0[key], value) and torch.equal(rank1[key], value), key
    assert int(one["counts"].sum()) == 12  # every process's pairs, not only its own six


def test_a_torchrun_beta_tcvae_run_with_global_batch_terms_resumes_and_reports(tmp_path):
    run = tmp_path / "run"
    argv = ["train", "--model", "beta-tcvae", "--dataset", "digits", "--train-size", "320", "--latent-dim", "3"]
    argv += ["--device", "cpu", "--no-progress", "--batch-size", "16", "--batch-terms", "global", "--out", str(run)]
    _pyroib([*argv, "--epochs", "1"], processes=2)
    config = json.loads((run / "config.json").read_text())
    assert config["processes"] == 2 and config["batch_terms"] == "global"
    _pyroib([*argv, "--epochs", "2", "--resume"])
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2] and all(math.isfinite(r["train_total_correlation"]) for r in rows)
    _pyroib(["report", str(run)])
    report = (run / "report" / "report.md").read_text()
    assert "total_correlation" in report and (run / "report" / "training_curves.png").is_file()
