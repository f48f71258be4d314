import os

import pyro
import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Decoded data sets are cached in a folder of the test session's, not the user's home."""
    previous = os.environ.get("PYROIB_CACHE_DIR")
    os.environ["PYROIB_CACHE_DIR"] = str(tmp_path_factory.mktemp("decoded-cache"))
    yield
    if previous is None:
        os.environ.pop("PYROIB_CACHE_DIR", None)
    else:
        os.environ["PYROIB_CACHE_DIR"] = previous


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The tests use small networks: one intra-op thread is faster, and on shared cores much faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    """Every test starts from a fixed seed, an empty parameter store and Pyro validation on."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()
