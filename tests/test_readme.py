"""Every Python snippet in the README runs, in a directory holding the digits run the README trains."""

import re
from pathlib import Path

import pytest

from pyroib import cli

README = Path(__file__).resolve().parent.parent / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    code = cli.main(
        [
            "train",
            "--model",
            "vae",
            "--dataset",
            "digits",
            "--epochs",
            "2",
            "--latent-dim",
            "4",
            "--device",
            "cpu",
            "--no-progress",
            "--out",
            str(root / "runs" / "digits"),
        ]
    )
    assert code == 0
    return root


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[f"snippet{i}" for i in range(len(SNIPPETS))])
def test_readme_snippet_runs(snippet, workdir, monkeypatch):
    if "data_plate(x, index, size)" in snippet and "def forward" not in snippet:
        pytest.skip("an excerpt of models/vae.py, not a program")
    monkeypatch.chdir(workdir)
    exec(compile(snippet, "README.md", "exec"), {"__name__": "readme"})
