"""`pynvml` of the sampling process in multi-GPU CPU tests: the real module, its device calls
answered by the modelled GPUs that tests/nvml_gpus.py describes and the test put in the environment."""

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

globals().update(nvml_gpus.fakes(_real, *nvml_gpus.from_environment(os.environ[nvml_gpus.ENV])))
