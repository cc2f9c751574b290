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


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """The synthetic gpt-oss-tiny checkpoint (seed 0) on disk, written once per test session."""
    from harness.model.spec import get_spec
    from harness.model.synthetic import synthetic_checkpoint

    return synthetic_checkpoint(get_spec("gpt-oss-tiny"), seed=0, cache_dir=tmp_path_factory.mktemp("synthetic"))


@pytest.fixture
def sweep(tmp_path):
    """expand(...) of a list of overrides, in process, with two fault backends, `fault` and `other`, known."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from bench_cli import fault_conf
    from harness.cli import CONF
    from harness.runner.sweep import combinations, expand

    search = fault_conf(tmp_path, fault={}, other={})
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()

        def run(*overrides, arms=()):
            fixed = [search, "model.synthetic=device", "telemetry=off", "sweep=none"]
            return expand(lambda combo: compose("config", overrides=fixed + combo),
                          combinations(loader, list(overrides), list(arms)))
        yield run
