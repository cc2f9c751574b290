"""Every backend yaml's own keys are options its class takes: the sweep checks a point's backend
keys against the class's constructor, so a yaml key the class hides behind **options would refuse
every sweep of that backend (vllm.yaml did, on the H200, before its constructor named them)."""
from pathlib import Path

import pytest
import yaml

from harness.config import BACKEND_KEYS
from harness.runner.sweep import _options
from harness.runner.point import load_class

CONF = Path(__file__).resolve().parents[1] / "harness" / "conf" / "backend"
YAMLS = sorted(p for p in CONF.glob("*.yaml") if "_target_" in yaml.safe_load(p.read_text()))


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.stem)
def test_backend_yaml_keys_are_options_of_its_class(path):
    conf = yaml.safe_load(path.read_text())
    try:
        cls = load_class(conf["_target_"])
    except ImportError as e:
        pytest.skip(f"{conf['_target_']} does not import here: {e}")
    options = _options(cls)
    unknown = sorted(set(conf) - set(BACKEND_KEYS) - options)
    assert not unknown, f"{path.name}: {unknown} are not options of {conf['_target_']}"
