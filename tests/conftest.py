"""Shared test settings: small thread pools so the suite behaves the same on 2 cores."""
import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long end-to-end runs (deselect with -m 'not slow')")


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
