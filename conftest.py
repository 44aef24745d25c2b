"""Shared pytest hooks for tests/ and the doctests under jdd/.

After every test module, drop compiled programs: JAX's caches and jdd's own ``lru_cache``s of
jitted functions. Each compiled XLA CPU executable keeps memory mappings for its code; over the
whole suite (~560 tests, thousands of programs) the process reached the kernel's limit of memory
mappings (vm.max_map_count, 65530) and XLA crashed with a segmentation fault while compiling a
late doctest. Clearing per module keeps the count bounded.

Compiled programs are also written to a persistent XLA compilation cache shared by every worker
process of the session (and the notebook kernels the notebook tests start), so a program that
several tests build (the evaluation learner of every registry round trip, the protocol's DSA
training loop, a model's gradient) compiles once per session instead of once per test module.
A cache hit is the same executable XLA would build; the cache key covers the program, the jax and
XLA versions and flags. The cache lives in a temporary folder removed at the end of the session;
set ``JDD_TEST_JAX_CACHE`` to a folder to keep it between runs instead.
"""

import functools
import gc
import os
import shutil
import sys
import tempfile

import pytest

_OWNED_CACHE = "_JDD_TEST_JAX_CACHE_OWNED"


def pytest_configure(config):
    """Point JAX at the session's compilation cache before jax is imported (environment
    variables, so xdist workers and notebook kernels inherit it)."""
    if hasattr(config, "workerinput"):  # an xdist worker: the controller has set it up
        return
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:  # the user's own cache wins
        return
    keep = os.environ.get("JDD_TEST_JAX_CACHE")
    path = keep or tempfile.mkdtemp(prefix="jdd-test-jax-cache-")
    if not keep:
        os.environ[_OWNED_CACHE] = path
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


def pytest_unconfigure(config):
    if hasattr(config, "workerinput"):
        return
    path = os.environ.pop(_OWNED_CACHE, None)
    if path:
        os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
        shutil.rmtree(path, ignore_errors=True)


def _clear_jdd_caches() -> None:
    for name, module in list(sys.modules.items()):
        if not (name == "jdd" or name.startswith("jdd.")) or module is None:
            continue
        for value in list(vars(module).values()):
            if isinstance(value, functools._lru_cache_wrapper):
                value.cache_clear()


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    yield
    import jax
    _clear_jdd_caches()
    jax.clear_caches()
    gc.collect()


@pytest.fixture(scope="module")
def tiny_soft_run(tmp_path_factory):
    """A tiny unrolled digits run folder, one per test module (tests add files to it): 1 seed,
    IPC 1, learned soft labels and learning rate, not evaluated."""
    from jdd.cli import main
    out = tmp_path_factory.mktemp("tiny-run") / "run"
    assert main(["distill", "--method", "unrolled", "--ipc", "1", "--steps", "4",
                 "--inner-steps", "3", "--hidden", "16", "--no-eval", "--out", str(out),
                 "--quiet"]) == 0
    return out
