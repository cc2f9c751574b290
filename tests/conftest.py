import os

import pytest
import torch

if not torch.cuda.is_available():
    # Kernels read TRITON_INTERPRET when they are decorated, i.e. at the first import of their
    # module, which any test may trigger (the harness imports backends): set it before all of them.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
