"""Shared test settings: one thread per test process, so the suite behaves the same on 2 cores."""
import os

import pytest
import torch

# Tiny models and batches: one thread is as fast as two and immune to oversubscription when
# tests start subprocesses; OMP_NUM_THREADS overrides.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long end-to-end runs (deselect with -m 'not slow')")
    config.addinivalue_line(
        "markers",
        "numerics: results that float summation order could move (values against float64 references, "
        "short learning runs); scripts/test.sh runs them again on the portable kernel path "
        "(MKL_ENABLE_INSTRUCTIONS=SSE4_2, ONEDNN_MAX_CPU_ISA=SSE41, ATEN_CPU_CAPABILITY=default) with 2 threads",
    )


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
