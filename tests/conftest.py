"""Shared test set-up: one thread for torch (the CI machine has two cores) and fixed seeds."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _determinism():
    from monai.utils import set_determinism

    set_determinism(seed=0)
    yield
    set_determinism(seed=None)
