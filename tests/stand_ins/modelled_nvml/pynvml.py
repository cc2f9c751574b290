"""`pynvml` of the sampling process in CPU tests: the real module, its device calls answered by the
modelled GPU(s) the test put in the environment: one GPU of tests/nvml_model.py, or several of
tests/nvml_gpus.py."""

import importlib.machinery
import importlib.util
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.machinery.PathFinder.find_spec("pynvml", [p for p in sys.path if os.path.abspath(p or ".") != _here])
_real = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_real)
globals().update({k: v for k, v in vars(_real).items() if not k.startswith("__")})

import nvml_gpus  # noqa: E402  (tests/, on the path the test gives)
import nvml_model  # noqa: E402

_model = nvml_gpus if nvml_gpus.ENV in os.environ else nvml_model
globals().update(_model.fakes(_real, *_model.from_environment(os.environ[_model.ENV])))
