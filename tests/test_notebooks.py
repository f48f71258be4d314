"""Every notebook in notebooks/ is stored without outputs and executes without error in smoke mode
(PYROIB_SMOKE=1: tiny runs, written under a temporary directory), in a kernel of this interpreter."""

import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
EXPECTED = {"quickstart", "information_plane", "anchor_vae", "custom_model", "priors"}
CELL_TIMEOUT_S = 300


def test_notebook_set_is_complete():
    assert {path.stem for path in NOTEBOOKS} == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: clear the outputs"


@pytest.fixture(scope="session")
def notebook_kernel_manager(tmp_path_factory):
    """A kernel manager class whose "python3" kernelspec runs this very interpreter.

    The spec lives in a temporary folder, so a user-level "python3" kernel that points at another Python cannot
    take its place, and nothing is installed into the environment.
    """
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    kernels = tmp_path_factory.mktemp("kernels")
    write_kernel_spec(str(kernels / "python3"))
    assert KernelSpecManager(kernel_dirs=[str(kernels)]).get_kernel_spec("python3").argv[0] == sys.executable

    class ThisInterpreterKernelManager(AsyncKernelManager):
        @default("kernel_spec_manager")
        def _kernel_spec_manager_default(self):
            return KernelSpecManager(kernel_dirs=[str(kernels)])

    return ThisInterpreterKernelManager


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_in_smoke_mode(path, notebook_kernel_manager, tmp_path, monkeypatch):
    monkeypatch.setenv("PYROIB_SMOKE", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks' run directories (tempfile.mkdtemp) land here
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        kernel_manager_class=notebook_kernel_manager,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert not errors
    assert not any(Path(tmp_path).glob("*.ipynb"))
    assert os.listdir(tmp_path), "the notebook should have written its runs under TMPDIR"
