"""The documentation is executable: every Python snippet of the README and docs/ runs, what a snippet says it prints
(``# prints: TEXT``) it prints, the CLI reference is the commands' current --help, and no page cites a file outside
the repository."""

import contextlib
import io
import re
from pathlib import Path

import pytest

from pyroib import cli

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SNIPPETS = [(page, code) for page in PAGES for code in re.findall(r"```python\n(.*?)```", page.read_text(), re.S)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A directory holding the digits run the README trains (runs/digits)."""
    root = tmp_path_factory.mktemp("docs")
    argv = ["train", "--model", "vae", "--dataset", "digits", "--epochs", "2", "--latent-dim", "4", "--device", "cpu"]
    assert cli.main([*argv, "--no-progress", "--out", str(root / "runs" / "digits")]) == 0
    return root


@pytest.mark.parametrize(
    "page, snippet", SNIPPETS, ids=[f"{page.relative_to(ROOT)}:{i}" for i, (page, _) in enumerate(SNIPPETS)]
)
def test_snippet_runs_and_prints_what_it_says(page, snippet, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(snippet, str(page), "exec"), {"__name__": "__main__"})
    for claim in re.findall(r"# prints: (.*)", snippet):
        assert claim.strip() in out.getvalue(), (claim, out.getvalue())


def test_cli_reference_is_current():
    from pyroib.cli.reference import render

    assert (ROOT / "docs" / "cli.md").read_text() == render(), "run: python -m pyroib.cli.reference > docs/cli.md"


def test_no_page_or_module_cites_files_outside_the_repository():
    texts = [*PAGES, ROOT / "benchmarks" / "README.md", *ROOT.glob("pyroib/**/*.py"), *ROOT.glob("models/*.py")]
    assert not [p for p in texts if re.search(r"REFERENCE\.md|DESIGN\.md", p.read_text())]


def test_readme_is_short():
    assert len((ROOT / "README.md").read_bytes()) <= 8 * 1024
