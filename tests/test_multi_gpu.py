"""Points that span GPUs, on a CPU: the `parallel` layout (checks, sweep keys, group key), vLLM's
arguments and environment for it, telemetry of several modelled GPUs, the roofline per GPU,
procurement per GPU, and the SLURM launcher's configuration."""

import os
import time

import pandas as pd
import pynvml
import pytest
import torch

import nvml_gpus
import nvml_model
from harness.analysis import procurement
from harness.analysis.roofline import per_gpu, roofline
from harness.config import Agreement, BackendChoice, ModelChoice, Parallel, PointConfig, TelemetryConfig, Workload
from harness.model.load_request import LoadRequest
from harness.model.spec import SPECS
from harness.telemetry import Telemetry
from nvml_model import Gpu

POWER_CAP = pynvml.nvmlClocksEventReasonSwPowerCap
S120 = SPECS["gpt-oss-120b"]


# ---- the layout ---------------------------------------------------------------------------------
def test_gpus_follow_tp_and_dp():
    assert Parallel().gpu_count == 1 and Parallel(tp=4).gpu_count == 4 and Parallel(tp=2, dp=4).gpu_count == 8
    assert Parallel(gpus=4, tp=2, dp=2).problems() == []
    assert Parallel(tp=2, dp=2, ep=4).problems(S120.num_attention_heads, S120.num_local_experts) == []
    assert Parallel(tp=2, dp=2).columns() == {"gpu_count": 4, "tp": 2, "ep": 1, "dp": 2}
    assert Parallel(tp=2).devices(first=1) == [1, 2]


@pytest.mark.parametrize("layout, line", [
    (Parallel(gpus=2, tp=4), "parallel.gpus=2: must equal parallel.tp x parallel.dp = 4 (or null)"),
    (Parallel(tp=2, ep=4), "parallel.ep=4: must be 1 or parallel.tp x parallel.dp = 2"),
    (Parallel(tp=3), "parallel.tp=3: must divide the model's 64 attention heads"),
    (Parallel(tp=1, dp=3, ep=3), "parallel.ep=3: must divide the model's 128 experts"),
    (Parallel(tp=0), "parallel.tp=0: must be a positive integer"),
    (Parallel(gpus=0), "parallel.gpus=0: must be a positive integer or null"),
])
def test_a_bad_layout_is_one_line(layout, line):
    problems = layout.problems(S120.num_attention_heads, S120.num_local_experts)
    assert len(problems) == 1 and problems[0].startswith(line), problems


def test_engines_refuse_what_they_do_not_implement():
    assert Parallel().refused_by("torch_ref", ()) == []
    assert Parallel(tp=2).refused_by("torch_ref", ()) == [
        "parallel.gpus=2: backend torch_ref runs on one GPU; use backend=vllm (or vllm_serve) to span GPUs"]
    assert Parallel(dp=2, ep=2).refused_by("vllm", ("tp", "ep")) == ["parallel.dp=2: backend vllm supports only "
                                                                    "parallel.tp, parallel.ep"]
    assert Parallel(tp=2, dp=2, ep=4).refused_by("vllm_serve", ("tp", "ep", "dp")) == []


def _point(parallel: Parallel) -> PointConfig:
    ref = BackendChoice("torch_ref", "backends.torch_ref.TorchRef")
    return PointConfig(BackendChoice("vllm", "backends.vllm.VLLM"), ModelChoice("gpt-oss-120b"), "mxfp4",
                       Workload(1, 128, 8, 1, 4, 3, 0, 0.0, 60.0, 600.0), TelemetryConfig(),
                       Agreement(False, 2, 8, ref), "auto", parallel)


def test_another_layout_is_another_engine_and_survives_the_worker_message():
    one, two = _point(Parallel()), _point(Parallel(tp=2))
    assert one.group_key() != two.group_key()
    assert PointConfig.from_dict(two.to_dict()) == two
    assert PointConfig.from_dict({k: v for k, v in one.to_dict().items() if k != "parallel"}) == one


def test_parallel_keys_compose_and_unknown_ones_are_refused():
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException

    from harness.cli import CONF

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        assert dict(compose("config", overrides=["sweep=none"]).parallel) == {"gpus": None, "tp": 1, "ep": 1, "dp": 1}
        cfg = compose("config", overrides=["sweep=none", "parallel.tp=2", "parallel.dp=2", "parallel.ep=4"])
        assert Parallel(**cfg.parallel).columns() == {"gpu_count": 4, "tp": 2, "ep": 4, "dp": 2}
        with pytest.raises(ConfigCompositionException, match="parallel.pp"):
            compose("config", overrides=["sweep=none", "parallel.pp=2"])
        with pytest.raises(Exception, match="parallel.tp"):  # the schema converts and refuses
            compose("config", overrides=["sweep=none", "parallel.tp=two"])


# ---- vLLM ---------------------------------------------------------------------------------------
def _request(parallel: Parallel) -> LoadRequest:
    request = LoadRequest(S120, "mxfp4", None, max_batch_size=8, max_seq_len=256)
    request.parallel = parallel  # the field the lead adds to LoadRequest; assigning works either way
    return request


def test_vllm_maps_the_layout_and_keeps_nvlink_multicast_off():
    from backends.vllm import NVLS_OFF, OFFLINE_PARALLEL, SERVE_PARALLEL, VLLM, EngineOptions, VLLMServe

    engine = EngineOptions(env={"NCCL_NVLS_ENABLE": 1, "VLLM_CPU_KVCACHE_SPACE": 1})
    args = engine.engine_args(_request(Parallel(tp=2, dp=2, ep=4)))
    assert (args["tensor_parallel_size"], args["data_parallel_size"], args["enable_expert_parallel"]) == (2, 2, True)
    assert engine.engine_args(_request(Parallel(tp=4)))["enable_expert_parallel"] is False
    flags = engine.cli_args(_request(Parallel(tp=2, dp=2, ep=4)))
    assert flags[flags.index("--tensor-parallel-size") + 1] == "2" and "--enable-expert-parallel" in flags
    assert flags[flags.index("--data-parallel-size") + 1] == "2"
    env = engine.environment({"VLLM_USE_FLASHINFER_MOE_MXFP4_BF16": "1"})
    assert NVLS_OFF == {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
    assert env.items() >= NVLS_OFF.items()  # a yaml's env cannot turn multicast back on
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1" and env["VLLM_USE_FLASHINFER_MOE_MXFP4_BF16"] == "1"
    assert VLLM.parallel_keys == OFFLINE_PARALLEL == ("tp", "ep") and VLLMServe.parallel_keys == SERVE_PARALLEL


def test_vllm_serve_starts_its_server_with_the_switches(monkeypatch):
    import backends.vllm as v
    from backends.vllm import paths

    started = {}
    monkeypatch.setattr(paths, "installed_moe_path", lambda name: paths.moe_path(name, True))
    monkeypatch.setattr(v, "engine_checkpoint", lambda request: "/checkpoint")
    monkeypatch.setattr(v, "ServerProcess", lambda name, command, port, env, ready_timeout_s: started.update(
        command=command, env=env))
    head = ["--data-parallel-size-local", "2", "--data-parallel-address", "10.0.0.1", "--data-parallel-rpc-port",
            "13345"]  # the head node of vLLM's multi-node DP (docs/multi-gpu.md); the other nodes run --headless
    v.VLLMServe(serve_args=head).serve(_request(Parallel(tp=2, dp=4, ep=8)))
    assert started["env"].items() >= v.NVLS_OFF.items()
    command = started["command"]
    assert command[command.index("--tensor-parallel-size") + 1] == "2"
    assert command[command.index("--data-parallel-size") + 1] == "4" and "--enable-expert-parallel" in command
    assert command[-len(head):] == head


# ---- telemetry of several GPUs -------------------------------------------------------------------
def modelled_gpus(monkeypatch, gpus: list[Gpu]):
    """The modelled GPUs for this process (patched into pynvml) and for the sampling process."""
    t0 = time.perf_counter()
    for name, fn in nvml_gpus.fakes(pynvml, gpus, t0).items():
        monkeypatch.setattr(pynvml, name, fn)
    monkeypatch.setenv(nvml_gpus.ENV, nvml_gpus.environment(gpus, t0, True))
    path = [str(nvml_gpus.STAND_IN), str(nvml_gpus.STAND_IN.parents[1]), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in path if p))


def test_a_point_on_three_gpus_sums_energy_and_power_and_reports_any_throttling(monkeypatch):
    watts, mem = [300.0, 200.0, 100.0], [60.0, 50.0, 40.0]
    gpus = [Gpu([(0.0, w, POWER_CAP if i == 2 else 0)], counter_period_s=0.01, lag_s=0.0, hold_s=0.01, mem_gib=m)
            for i, (w, m) in enumerate(zip(watts, mem))]
    modelled_gpus(monkeypatch, gpus)
    tel = Telemetry({"period_ms": 10, "nvtx": False}, device_index=Parallel(tp=3).devices())
    assert tel.env()["gpu_count"] == 3
    lin = torch.nn.Linear(16, 16)
    with tel.point("p0") as pt:
        for _ in range(2):
            with pt.phases("prefill"):
                lin(torch.randn(4, 16))
            with pt.phases("decode"):
                time.sleep(0.15)
    cols = pt.columns(decode_tokens=10)
    samples = pt.samples()
    tel.close()
    decode_s = sum(w.duration_s for w in pt.windows if w.phase == "decode")
    assert sorted(samples.gpu.unique()) == [0, 1, 2]
    assert samples.groupby("gpu").mem_used_gib.max().tolist() == pytest.approx(mem)
    assert samples.groupby("gpu").energy_j.first().tolist() == [0, 0, 0]  # each GPU's energy since the point began
    assert cols["decode_energy_j"] == pytest.approx(sum(watts) * decode_s, rel=0.15)
    assert cols["power_w_mean"] == pytest.approx(sum(watts))
    assert cols["peak_mem_gib"] == pytest.approx(sum(mem)) and cols["peak_mem_per_gpu_gib"] == pytest.approx(max(mem))
    assert cols["throttled"] is True and cols["throttle_reasons"] == "sw_power_cap"  # GPU 2's alone
    per_gpu_reasons = samples.dropna(subset=["phase"]).groupby("gpu").throttle_reasons.agg(set)
    assert per_gpu_reasons[2] == {"sw_power_cap"} and per_gpu_reasons[0] == {""}


def test_energy_of_a_phase_sums_the_gpus_counters():
    from harness.telemetry import energy
    from harness.telemetry.energy import Window

    gpus = [Gpu([(0.0, 400.0, 0)], counter_period_s=0.05), Gpu([(0.0, 100.0, 0)], counter_period_s=0.2)]
    ticks = [k * 0.02 for k in range(100)]
    samples = pd.DataFrame([{"gpu": i, "t_s": t, "power_w": g.power_field(t), "energy_j": g.counter(t)}
                            for i, g in enumerate(gpus) for t in ticks])
    assert energy.counter_period_s(samples) == pytest.approx(0.2)  # the slowest GPU's counter decides
    window = Window("decode", 0.5, 1.7, sum(g.counter(0.5) for g in gpus), sum(g.counter(1.7) for g in gpus))
    joules, source = energy.phase_energy([window], samples)["decode"]
    assert source == "counter" and joules == pytest.approx(500.0 * 1.2, rel=0.1)
    assert energy.tick_power(samples).iloc[-1] == pytest.approx(500.0)
    partial = samples.drop(samples[(samples.gpu == 1) & (samples.t_s > 1.0)].index)
    assert energy.tick_power(partial).index.max() <= 1.0  # a tick without every GPU's power is no total


# ---- the roofline per GPU ------------------------------------------------------------------------
def test_tensor_parallel_splits_bytes_and_flops_and_replicates_kv_past_the_kv_heads():
    one = per_gpu(S120, "mxfp4", 32, 4096, 4100)
    for tp in (2, 4, 8):
        split = per_gpu(S120, "mxfp4", 32, 4096, 4100, Parallel(tp=tp))
        assert split.decode_bytes * tp == pytest.approx(one.decode_bytes)
        assert split.decode_flops * tp == pytest.approx(one.decode_flops)
        assert split.prefill_flops * tp == pytest.approx(one.prefill_flops)
    sixteen = per_gpu(S120, "mxfp4", 32, 4096, 4100, Parallel(tp=16))
    kv = S120.kv_cache_bytes(32, 4100)
    assert sixteen.decode_bytes == pytest.approx((one.decode_bytes - kv) / 16 + kv / S120.num_key_value_heads)


def test_data_parallel_splits_the_batch_and_expert_parallel_the_experts():
    one = per_gpu(S120, "mxfp4", 64, 1024, 1030)
    dp = per_gpu(S120, "mxfp4", 64, 1024, 1030, Parallel(dp=2))
    half = per_gpu(S120, "mxfp4", 32, 1024, 1030)
    assert dp == half  # each replica: 32 of the 64 sequences, all the weights
    assert per_gpu(S120, "mxfp4", 5, 1024, 1030, Parallel(dp=2)) == per_gpu(S120, "mxfp4", 3, 1024, 1030)
    ep = per_gpu(S120, "mxfp4", 64, 1024, 1030, Parallel(dp=2, ep=2))
    assert ep.decode_flops == pytest.approx(one.decode_flops / 2)  # every token's experts, spread over 2 GPUs
    experts = S120.num_hidden_layers * S120.expert_bytes("mxfp4")
    # a DP replica touches the experts of its half batch; an EP rank its share of the whole batch's
    assert dp.decode_bytes - ep.decode_bytes == pytest.approx(
        experts * (S120.unique_experts(32) - S120.unique_experts(64) / 2))
    assert ep.decode_bytes < dp.decode_bytes < one.decode_bytes


def test_roofline_columns_are_per_gpu():
    base = roofline(S120, "mxfp4", 32, 4096, 64, 20.0, 400.0, "NVIDIA H200")
    tp4 = roofline(S120, "mxfp4", 32, 4096, 64, 20.0, 400.0, "NVIDIA H200", parallel=Parallel(tp=4))
    assert base["mbu_datasheet"] is not None
    assert tp4["decode_bytes_per_step"] == pytest.approx(base["decode_bytes_per_step"] / 4)
    assert tp4["mbu_datasheet"] == pytest.approx(base["mbu_datasheet"] / 4)  # the same step time on 4 GPUs
    assert tp4["prefill_mfu_datasheet"] == pytest.approx(base["prefill_mfu_datasheet"] / 4)
    assert tp4["bound"] == base["bound"]  # the intensity is the layout's, not the count's


# ---- procurement per GPU -------------------------------------------------------------------------
def test_procurement_pools_each_layout_apart_and_counts_per_gpu():
    row = dict(hardware="H200", model="gpt-oss-120b", backend="vllm", quant="mxfp4", context_len=1024,
               batch_size=8, status="ok", gpu_name="NVIDIA H200", energy_j_per_tok=None, power_w_mean=None,
               ttft_ms=50.0, new_tokens=64, cv=0.01, run_id="r")
    points = pd.DataFrame([{**row, "gpu_count": 1, "tp": 1, "ep": 1, "dp": 1, "tpot_ms_mean": 10.0,
                            "decode_tok_s": 800.0},
                           {**row, "gpu_count": 4, "tp": 4, "ep": 1, "dp": 1, "tpot_ms_mean": 5.0,
                            "decode_tok_s": 1600.0},
                           {**row, "gpu_count": None, "tp": None, "ep": None, "dp": None, "tpot_ms_mean": 10.0,
                            "decode_tok_s": 800.0, "run_id": "old"}])  # a run from before the layout columns
    pooled = procurement.pool(points).set_index("gpu_count")
    assert sorted(pooled.index) == [1, 4]
    assert pooled.loc[4, "per_gpu"] == pytest.approx(400.0) and pooled.loc[4, "per_user"] == pytest.approx(200.0)
    assert pooled.loc[1, "per_gpu"] == pytest.approx(800.0) and pooled.loc[1, "run_ids"] == "old,r"
    # $/M tokens of the 4-GPU engine: its 4 GPU-hours over its tokens
    assert procurement.usd_per_mtok(3.0, pooled.loc[4, "per_gpu"]) == pytest.approx(4 * 3.0 / (1600 * 3600 / 1e6))


# ---- across nodes: the SLURM launcher -------------------------------------------------------------
def test_the_slurm_launcher_config_composes_into_a_job_script(tmp_path, monkeypatch):
    """Composes hydra/launcher=gptoss_slurm and hands its settings to submitit as the launcher does;
    the job script is written, not submitted (`srun` is a stand-in: there is no SLURM here)."""
    import submitit
    from hydra import compose, initialize_config_dir
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    from harness.cli import CONF

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=["sweep=none", "hydra/launcher=gptoss_slurm", "hydra.launcher.partition=gpu",
                                           "parallel.tp=4"], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher)
    assert launcher.pop("_target_") == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher["gpus_per_node"] >= Parallel(**cfg.parallel).gpu_count and launcher["tasks_per_node"] == 1
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    launcher.pop("submitit_folder")
    executor = submitit.AutoExecutor(cluster="slurm", folder=tmp_path / "jobs",
                                     slurm_max_num_timeout=launcher.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in launcher.items()})
    script = executor._executor._make_submission_file_text("gptoss-bench group=g", "uid")
    for line in ("#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=1", "#SBATCH --nodes=1",
                 "#SBATCH --partition=gpu", "export NCCL_NVLS_ENABLE=0", "export TORCH_SYMM_MEM_DISABLE_MULTICAST=1",
                 "export NVSHMEM_DISABLE_NVLS=1"):
        assert line in script.splitlines(), line
