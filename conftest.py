"""Shared pytest hooks for tests/ and the doctests under jdd/.

After every test module, drop compiled programs: JAX's caches and jdd's own ``lru_cache``s of
jitted functions. Each compiled XLA CPU executable keeps memory mappings for its code; over the
whole suite (~560 tests, thousands of programs) the process reached the kernel's limit of memory
mappings (vm.max_map_count, 65530) and XLA crashed with a segmentation fault while compiling a
late doctest. Clearing per module keeps the count bounded; the cost is a recompile of what the
next module shares with the previous one.
"""

import functools
import gc
import sys

import pytest


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
