"""Sweep expansion and validation, in process: what points a sweep has and what makes it invalid."""

import pytest
import torch

from harness.model.spec import get_spec
from harness.runner.prompts import prompts
from harness.runner.sweep import SweepError


def test_cartesian_product_named_and_grouped(sweep):
    points = sweep("backend=fault,other", "model=gpt-oss-tiny", "workload.batch_size=1,4", "workload.context_len=32,64")
    assert len(points) == 8
    assert len({p.point_id for p in points}) == 8
    assert points[0].point_id == "fault-gpt-oss-tiny-mxfp4-b1-c32-n32"
    assert [p.group for p in points].count("fault-gpt-oss-tiny-mxfp4") == 4
    assert {p.group for p in points} == {"fault-gpt-oss-tiny-mxfp4", "other-gpt-oss-tiny-mxfp4"}
    assert points[1].config.workload.context_len == 64 and points[2].config.workload.batch_size == 4


def test_points_that_load_differently_are_different_groups(sweep):
    points = sweep("backend=fault", "model=gpt-oss-tiny", "workload.seed=0,1")
    assert len({p.group for p in points}) == 2
    assert all(p.group.startswith("fault-gpt-oss-tiny-mxfp4-") for p in points)  # a digest tells them apart
    assert len({p.point_id for p in points}) == 2


def test_auto_is_the_tiny_model_on_torch_ref_without_a_gpu(sweep):
    if torch.cuda.is_available():
        pytest.skip("auto picks the GPU default here")
    [point] = sweep()
    assert point.config.backend.name == "torch_ref"
    assert point.config.model.name == "gpt-oss-tiny"
    assert "backend=torch_ref" in point.overrides


def test_invalid_sweep_names_every_bad_key_and_point(sweep, tmp_path):
    with pytest.raises(SweepError) as e:
        sweep("backend=fault,nope", "model=gpt-oss-tiny", "quant=mxfp4,bf16", "workload.batch_size=0,2",
              "workload.context_len=4090", f"model.path={tmp_path / 'missing'}")
    msg = str(e.value)
    for bad in ("Could not find 'backend/nope'", "workload.batch_size=0: must be a positive integer",
                "quant=bf16: backend fault supports only ['mxfp4']", f"model.path={tmp_path / 'missing'}: no such directory"):
        assert bad in msg
    assert "in [backend=fault quant=bf16 workload.batch_size=2]" in msg


def test_positions_beyond_the_model_are_refused(sweep):
    with pytest.raises(SweepError, match=r"workload.context_len=4090 \+ workload.new_tokens=32: 4122 positions "
                                         r"exceed max_position_embeddings=4096 of gpt-oss-tiny"):
        sweep("backend=fault", "model=gpt-oss-tiny", "workload.context_len=128,4090")


def test_unknown_model_and_telemetry_key(sweep):
    with pytest.raises(SweepError) as e:
        sweep("backend=fault", "model=gpt-oss-tiny", "model.name=gpt-oss-7b", "+telemetry.colour=red")
    assert "model=gpt-oss-7b: unknown model" in str(e.value)
    assert "telemetry.colour: unknown key" in str(e.value)


def test_prompt_rows_do_not_depend_on_the_batch():
    spec = get_spec("gpt-oss-tiny")
    small, big = prompts(spec, 0, 64, 2), prompts(spec, 0, 64, 8)
    assert torch.equal(small, big[:2])
    assert not torch.equal(prompts(spec, 1, 64, 2), small)
    assert int(big.max()) < min(spec.bos_token_id, spec.eos_token_id, spec.pad_token_id)


def test_a_layout_is_checked_named_and_refused_by_one_gpu_engines(sweep):
    """parallel.* reaches the point (its group, its name) and is checked against the model and the
    engine: the fault backend, like torch_ref, declares no parallel_keys and runs on one GPU."""
    with pytest.raises(SweepError) as e:
        sweep("backend=fault", "model=gpt-oss-tiny", "parallel.tp=2,3")
    msg = str(e.value)
    assert "parallel.gpus=2: backend fault runs on one GPU" in msg
    assert "parallel.tp=3: must divide the model's" in msg
    points = sweep("backend=fault", "model=gpt-oss-tiny")
    assert points[0].config.parallel.gpu_count == 1 and "-tp" not in points[0].group


def test_arms_run_the_product_once_per_engine_set_up(sweep):
    points = sweep("model=gpt-oss-tiny", "workload.batch_size=1,4",
                   arms=["backend=other", "backend=fault +backend.step_ms=0.5", "backend=fault +backend.step_ms=2"])
    assert len(points) == 6
    # a backend run in several set-ups names each by the options that differ; one run once, by none
    assert [(p.config.backend.name, p.setup) for p in points[::2]] == [
        ("other", ""), ("fault", "step_ms=0.5"), ("fault", "step_ms=2")]
    assert [p.point_id for p in points[2:4]] == ["fault-step_ms.0.5-gpt-oss-tiny-mxfp4-b1-c128-n32",
                                                  "fault-step_ms.0.5-gpt-oss-tiny-mxfp4-b4-c128-n32"]
    assert len({p.group for p in points}) == 3
    assert points[5].config.backend.options["step_ms"] == 2 and points[5].config.workload.batch_size == 4


def test_a_swept_backend_option_is_a_set_up_too(sweep):
    points = sweep("backend=fault", "model=gpt-oss-tiny", "+backend.step_ms=0.5,2")
    assert [p.setup for p in points] == ["step_ms=0.5", "step_ms=2"]
    # an option too odd for a point id leaves the set-up to the record and a digest to the id
    points = sweep("backend=fault", "model=gpt-oss-tiny", "+backend.prefill_ms=[1,2],[3]")
    assert [p.setup for p in points] == ["prefill_ms=[1,2]", "prefill_ms=[3]"]
    assert all(p.point_id.startswith("fault-gpt-oss-tiny-mxfp4-b1-c128-n32-") for p in points)


def test_arms_that_clash_with_the_sweep_or_sweep_themselves_are_refused(sweep):
    with pytest.raises(SweepError, match=r"arms: 'backend=fault' sets backend, which the command line or the "
                                         r"sweep also sets"):
        sweep("backend=other", "model=gpt-oss-tiny", arms=["backend=fault"])
    with pytest.raises(SweepError, match=r"arms: 'backend=fault \+backend.step_ms=1,2': an arm is one set-up"):
        sweep("model=gpt-oss-tiny", arms=["backend=fault +backend.step_ms=1,2"])
    with pytest.raises(SweepError, match=r"arms: 'backend=\(' is not a list of overrides: Error parsing override 'backend=\('"):
        sweep("model=gpt-oss-tiny", arms=["backend=fault", "backend=("])
