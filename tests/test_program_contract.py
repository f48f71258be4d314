"""The program contract on programs written as a Pyro user writes them (tests/programs/): other site names, pyro.plate
used directly, no injected prior, two latent layers; and the mistakes such a user makes, each refused in one line
naming the rule before anything is written."""

import json
import math
import shutil
from pathlib import Path

import pytest

from pyroib.checkpoint import read_jsonl
from pyroib.cli import main

PROGRAMS = Path(__file__).parent / "programs"
TINY = ["--dataset", "digits", "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--no-progress"]
PLATE = 'pyro.plate("data", size or x.shape[0], subsample=index)'


def _variant(tmp_path, name, *replacements, source="code_vae.py"):
    text = (PROGRAMS / source).read_text()
    for old, new, count in replacements:
        assert text.count(old) >= count, old
        text = text.replace(old, new, count)
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    return path


def _train(capsys, program, out, *flags):
    code = main(["train", "--model", str(program), *TINY, "--out", str(out), *flags])
    return code, capsys.readouterr().err


def _evaluate(capsys, run, *flags):
    assert main(["evaluate", str(run), "--json", "--device", "cpu", "--iw-samples", "5", *flags]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("objective, term", [("beta-tcvae", "train_total_correlation"), ("infovae", "train_mmd")])
def test_information_objectives_read_a_site_named_code(tmp_path, capsys, objective, term):
    code, err = _train(capsys, PROGRAMS / "code_vae.py", tmp_path / "run", "--objective", objective)
    assert code == 0, err
    row = read_jsonl(tmp_path / "run" / "metrics.jsonl")[-1]
    assert math.isfinite(row[term]) and "train_rate/code" in row
    result = _evaluate(capsys, tmp_path / "run", "--full-data-points", "300")
    assert result["mutual_information"] <= math.log(300) + 1e-6
    # the injected prior is known, so the terms against p(z) are reported, and the rate decomposes into them
    assert result["full_data_rate"] == pytest.approx(
        result["mutual_information"] + result["total_correlation"] + result["dimwise_kl"], abs=1e-3
    )
    assert math.isfinite(result["nll_iw"]) and result["nll_iw"] <= -result["elbo"] + 1.0


def test_help_lists_the_programs_and_objectives_flags(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--model", str(PROGRAMS / "code_vae.py"), "--objective", "beta-tcvae", "--help"])
    text = capsys.readouterr().out
    assert "--latent-dim" in text and "--width" in text and "--tc-weight" in text and "--latent-site" in text


@pytest.mark.parametrize(
    "name, replacements, rule",
    [
        ("plate_size", [(PLATE, 'pyro.plate("data", x.shape[0])', 1)], "has size 64 but the data set has"),
        ("batch_plate", [(PLATE, PLATE.replace('"data"', '"batch"'), 2)], "in no plate named 'data'"),
        (
            "site_mismatch",
            [('pyro.sample("code", dist.Normal(loc', 'pyro.sample("z", dist.Normal(loc', 1)],
            "the guide samples 'z' but the model has no site of that name",
        ),
        (
            "model_only",
            [
                (
                    "            logits = self.net(code)",
                    '            pyro.sample("noise", dist.Normal(x.new_zeros(x.shape[0]), 1.0))\n'
                    "            logits = self.net(code)",
                    1,
                )
            ],
            "'noise' of the model have no site in the guide",
        ),
        (
            "discrete_model_only_without_enumeration",
            [
                (
                    "            logits = self.net(code)",
                    '            pyro.sample("kind", dist.Categorical(logits=x.new_zeros(x.shape[0], 3)))\n'
                    "            logits = self.net(code)",
                    1,
                )
            ],
            "sum the discrete one(s) ('kind') out in the model: infer={'enumerate': 'parallel'}",
        ),
        (
            "sequential_in_model",
            [
                (
                    "            logits = self.net(code)",
                    '            pyro.sample("kind", dist.Categorical(logits=x.new_zeros(3)),'
                    ' infer={"enumerate": "sequential"})\n'
                    "            logits = self.net(code)",
                    1,
                )
            ],
            "marked for sequential enumeration but the guide has no site of that name",
        ),
        (
            "score_function_beside_enumeration",
            [
                (
                    "            logits = self.net(code)",
                    '            pyro.sample("kind", dist.Categorical(logits=x.new_zeros(3)))\n'
                    '            pyro.sample("flag", dist.Bernoulli(0.5 * x.new_ones(x.shape[0])))\n'
                    "            logits = self.net(code)",
                    1,
                ),
                (
                    '            pyro.sample("code", dist.Normal(loc, scale).to_event(1))',
                    '            pyro.sample("code", dist.Normal(loc, scale).to_event(1))\n'
                    '            pyro.sample("kind", dist.Categorical(logits=x.new_zeros(3)),'
                    ' infer={"enumerate": "parallel"})\n'
                    '            pyro.sample("flag", dist.Bernoulli(0.5 * x.new_ones(x.shape[0])))',
                    1,
                ),
            ],
            "guide site 'flag' is sampled without reparameterisation in a program that enumerates 'kind'",
        ),
        ("observes_nothing", [(", obs=x)", ")", 1)], "observes nothing"),
    ],
)
def test_a_users_mistake_is_refused_in_one_line_before_anything_is_written(tmp_path, capsys, name, replacements, rule):
    program = _variant(tmp_path, name, *replacements)
    code, err = _train(capsys, program, tmp_path / "run")
    assert code == 2
    assert rule in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_program_without_a_prior_trains_and_evaluates_without_guessing_one(tmp_path, capsys):
    program = _variant(
        tmp_path,
        "no_prior",
        ("def __init__(self, config, prior=None):", "def __init__(self, config):", 1),
        ("        self.prior = prior\n", "        self.prior = None\n", 1),
    )
    code, err = _train(capsys, program, tmp_path / "run")
    assert code == 0, err
    result = _evaluate(capsys, tmp_path / "run", "--full-data-points", "200")
    assert "total_correlation" in result and "marginal_kl" not in result and "dimwise_kl" not in result
    assert "injects no prior" in result["full_data_note"]
    assert main(["sample", str(tmp_path / "run"), "--out", str(tmp_path / "s.png"), "--device", "cpu"]) == 2
    assert "prior=" in capsys.readouterr().err
    code, err = _train(capsys, program, tmp_path / "vamp", "--prior", "vamp")
    assert code == 2 and "Model(config, prior=None)" in err


def test_per_site_beta_from_the_command_line_on_a_two_level_hierarchy(tmp_path, capsys):
    code, err = _train(capsys, PROGRAMS / "two_level.py", tmp_path / "run", "--beta", "z1=1,z2=4", "--epochs", "2")
    assert code == 0, err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["beta"] == {"z1": 1.0, "z2": 4.0}
    for row in read_jsonl(tmp_path / "run" / "metrics.jsonl"):
        assert (row["beta/z1"], row["beta/z2"]) == (1.0, 4.0)
        # each step's loss is distortion + 1 · rate(z1) + 4 · rate(z2), so the epoch means are too
        assert row["train_loss"] == pytest.approx(
            row["train_distortion"] + row["train_rate/z1"] + 4 * row["train_rate/z2"], rel=1e-5
        )
    result = _evaluate(capsys, tmp_path / "run", "--full-data-points", "0")
    assert set(result["kl_per_dim_by_site"]) == {"z1", "z2"}
    assert len(result["kl_per_dim_by_site"]["z1"]) == 4 and len(result["kl_per_dim_by_site"]["z2"]) == 2
    assert result["rate/z1"] + result["rate/z2"] == pytest.approx(result["rate"], rel=1e-5)


def test_a_schedule_on_one_site_leaves_the_others_at_their_beta(tmp_path, capsys):
    code, err = _train(
        capsys,
        PROGRAMS / "two_level.py",
        tmp_path / "run",
        "--beta",
        "3",
        "--schedule",
        "linear",
        "--warmup-epochs",
        "4",
        "--schedule-sites",
        "z2",
        "--epochs",
        "2",
    )
    assert code == 0, err
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert all(row["beta/z1"] == 3.0 for row in rows)
    assert 0 < rows[0]["beta/z2"] < rows[1]["beta/z2"] < 3.0


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--beta", "z1=1,z3=2"], "'z3' named in the run's settings are not latent sites"),
        (["--schedule-sites", "top"], "'top' named in the run's settings"),
        (["--objective", "beta-tcvae"], "reads one latent site and the program has 2 (z1, z2)"),
        (["--objective", "beta-tcvae", "--latent-site", "z9"], "'z9' named in the run's settings"),
    ],
)
def test_site_names_in_settings_must_exist(tmp_path, capsys, flags, message):
    code, err = _train(capsys, PROGRAMS / "two_level.py", tmp_path / "run", *flags)
    assert code == 2 and message in err, err


def test_the_objective_reads_the_site_it_is_told_on_a_hierarchy(tmp_path, capsys):
    code, err = _train(
        capsys, PROGRAMS / "two_level.py", tmp_path / "run", "--objective", "beta-tcvae", "--latent-site", "z1"
    )
    assert code == 0, err
    assert "train_total_correlation" in read_jsonl(tmp_path / "run" / "metrics.jsonl")[-1]


def test_a_run_keeps_its_program_and_is_rebuilt_from_the_copy(tmp_path, capsys, monkeypatch):
    program = tmp_path / "user" / "my_vae.py"
    program.parent.mkdir()
    shutil.copy(PROGRAMS / "code_vae.py", program)
    monkeypatch.chdir(program.parent)
    code, err = _train(capsys, Path("my_vae.py"), tmp_path / "run")  # a path relative to the working directory
    assert code == 0, err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert Path(config["model"]).is_absolute()
    assert (tmp_path / "run" / "program.py").read_bytes() == program.read_bytes()
    before = _evaluate(capsys, tmp_path / "run", "--full-data-points", "0")
    # the user edits the file afterwards (another width): the run still evaluates as trained, from anywhere
    program.write_text(program.read_text().replace("width: int = 32", "width: int = 16"))
    monkeypatch.chdir(tmp_path)
    after = _evaluate(capsys, tmp_path / "run", "--full-data-points", "0")
    assert after["elbo"] == pytest.approx(before["elbo"], rel=1e-6)
    # resuming from the edited file is refused; the run's copy resumes it
    code, err = _train(capsys, program, tmp_path / "run", "--epochs", "2", "--resume")
    assert code == 2 and "has changed since" in err
    code, err = _train(capsys, tmp_path / "run" / "program.py", tmp_path / "run", "--epochs", "2", "--resume")
    assert code == 0, err
    # an edited copy is detected, not silently used
    copy = tmp_path / "run" / "program.py"
    copy.write_text(copy.read_text() + "\n# edited\n")
    assert main(["evaluate", str(tmp_path / "run"), "--device", "cpu"]) == 2
    assert "does not match the sha256" in capsys.readouterr().err


def test_a_program_that_cannot_broadcast_over_particles_gets_a_note_naming_rule_6(tmp_path, capsys):
    program = _variant(
        tmp_path,
        "flat",
        (
            "logits = self.net(code).reshape(*code.shape[:-1], *x.shape[1:])",
            "logits = self.net(code).reshape(x.shape)",
            1,
        ),
    )
    code, err = _train(capsys, program, tmp_path / "run")
    assert code == 0, err  # training needs no particle plate
    result = _evaluate(capsys, tmp_path / "run", "--full-data-points", "0")
    assert "nll_iw" not in result and "rule 6" in result["nll_iw_note"]
    assert math.isfinite(result["elbo"])
    assert main(["report", str(tmp_path / "run"), "--device", "cpu", "--iw-samples", "5"]) == 0
    skipped = json.loads((tmp_path / "run" / "report" / "posterior_diagnostics.json").read_text())["skipped"]
    assert "rule 6" in skipped


@pytest.mark.parametrize(
    "name, replacements, rule",
    [
        # the plate written with no fallback: evaluation, called without size, would get Pyro's size -1
        ("plate_without_size", [(PLATE, 'pyro.plate("data", size, subsample=index)', 2)], "without index and size"),
        (
            "no_defaults",
            [("def forward(self, x, y=None, index=None, size=None):", "def forward(self, x, y, index, size):", 2)],
            "must accept (x, y=None, index=None, size=None)",
        ),
        (
            "not_a_module",
            [
                ("class Guide(nn.Module):", "class Guide:", 1),
                ("        super().__init__()\n        pixels", "        pixels", 1),
            ],
            "must be an nn.Module",
        ),
        ("typo", [("logits = self.net(code)", "logits = self.nett(code)", 1)], "AttributeError"),
        (
            "import_error",
            [("from torch import nn\n", "from torch import nn\n\nWIDTH = undefined_name\n", 1)],
            "failed to import at line",
        ),
        (
            "collision",
            [("    width: int = 32\n", "    width: int = 32\n    seed: int = 1\n", 1)],
            "would be the flag --seed, which pyroib train already has",
        ),
    ],
)
def test_more_mistakes_are_refused_in_one_line(tmp_path, capsys, name, replacements, rule):
    program = _variant(tmp_path, name, *replacements)
    code, err = _train(capsys, program, tmp_path / "run")
    assert code == 2 and rule in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_anchors_for_every_site_are_checked_against_each_site_before_anything_is_written(tmp_path, capsys):
    code, err = _train(capsys, PROGRAMS / "two_level.py", tmp_path / "run", "--anchors", "1,1,2,2")
    assert code == 2 and "4 anchor weights given but latent site 'z2' has 2 dimensions" in err
    assert "Trace Shapes" not in err and not (tmp_path / "run").exists()
    code, err = _train(capsys, PROGRAMS / "two_level.py", tmp_path / "ok", "--anchors", "z1=1,1,2,2")
    assert code == 0, err


def test_config_flags_take_the_fields_types_and_defaults(tmp_path, capsys):
    program = _variant(
        tmp_path,
        "typed",
        (
            "    width: int = 32\n",
            "    width: int = 32\n    dropout: float | None = None\n"
            "    sizes: tuple = field(default_factory=lambda: (4, 5))\n    flag: bool = False\n",
            1,
        ),
        ("from dataclasses import dataclass", "from dataclasses import dataclass, field", 1),
    )
    from pyroib.cli.train import spec_from_args

    spec, _ = spec_from_args(["--model", str(program), "--dropout", "0.25", "--flag", "true", "--out", "x"])
    assert spec.model_config["dropout"] == 0.25 and spec.model_config["sizes"] == [4, 5]
    assert spec.model_config["flag"] is True
    with pytest.raises(SystemExit):
        spec_from_args(["--model", str(program), "--flag", "flase"])
    assert "expected true or false" in capsys.readouterr().err


def test_resume_names_the_model_it_needs(tmp_path, capsys):
    code, err = _train(capsys, PROGRAMS / "code_vae.py", tmp_path / "run")
    assert code == 0, err
    argv = ["train", *TINY, "--epochs", "2", "--resume", "--out", str(tmp_path / "run")]
    assert main(argv) == 2  # no --model: the default vae is not the file the run was trained from
    assert f"pass --model {tmp_path / 'run' / 'program.py'}" in capsys.readouterr().err


def test_a_sweep_over_a_users_file_reruns_from_a_relative_path(tmp_path, capsys, monkeypatch):
    shutil.copy(PROGRAMS / "code_vae.py", tmp_path / "mine.py")
    monkeypatch.chdir(tmp_path)
    argv = ["sweep", "--model", "mine.py", "--beta", "1:2:2", *TINY, "--out", "sweep"]
    assert main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(argv) == 0, capsys.readouterr().err
    assert "skipped (finished earlier)" in (tmp_path / "sweep" / "sweep.md").read_text()


def test_another_prior_on_a_program_with_two_sites_asks_for_the_site_before_fitting(tmp_path, capsys):
    program = _variant(
        tmp_path,
        "two_encoded",
        (
            "class Guide(nn.Module):",
            "class Guide(nn.Module):\n    def encode(self, x):\n"
            "        loc, raw = self.bottom(self.body(x)).chunk(2, -1)\n"
            "        return loc, nn.functional.softplus(raw) + 1e-3\n",
            1,
        ),
        source="two_level.py",
    )
    code, err = _train(capsys, program, tmp_path / "run")
    assert code == 0, err
    assert main(["evaluate", str(tmp_path / "run"), "--prior", "aggregate", "--device", "cpu"]) == 2
    assert "Model.latent_site" in capsys.readouterr().err
    assert not (tmp_path / "run" / "aggregate_prior.pt").exists()
