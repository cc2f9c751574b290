"""Checkpoint I/O in the HF layout GPT-OSS ships in, and every validation error it reports."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.model import mxfp4
from harness.model.checkpoint import (INDEX, Checkpoint, CheckpointError, generation_config, plan_shards,
                                      validate_checkpoint, write_checkpoint)
from harness.model.spec import SPECS

TINY = SPECS["gpt-oss-tiny"]
SHARD = 400_000  # forces several shards of the 2 MB tiny checkpoint


def random_tensors(spec, quant="mxfp4", seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, (shape, dtype) in spec.tensors(quant).items():
        out[name] = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g) if dtype == "U8" \
            else torch.randn(shape, generator=g).bfloat16()
    return out


@pytest.fixture(scope="module")
def tensors():
    return random_tensors(TINY)


@pytest.fixture
def sharded(tmp_path, tensors):
    return write_checkpoint(tmp_path / "ckpt", TINY, tensors.items(), max_shard_bytes=SHARD)


def index_of(path):
    return json.loads((path / INDEX).read_text())


def problems(path):
    with pytest.raises(CheckpointError) as e:
        validate_checkpoint(path)
    assert str(path) in str(e.value)
    return e.value.problems


def rewrite(file, change):
    """Rewrite one shard through safetensors itself, as another writer would have."""
    tensors = load_file(file)
    change(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


# ---- write -> read ------------------------------------------------------------------------------

def test_write_read_identical_over_several_shards_named_as_gpt_oss_names_them(sharded, tensors):
    files = sorted(p.name for p in sharded.glob("*.safetensors"))
    last = len(files) - 1
    assert last >= 2
    assert files == [f"model-{i:05d}-of-{last:05d}.safetensors" for i in range(len(files))]  # "of" = last index
    index = index_of(sharded)
    assert set(index["weight_map"]) == set(tensors) and set(index["weight_map"].values()) == set(files)
    assert index["metadata"]["total_size"] == TINY.checkpoint_bytes()
    assert all((sharded / f).stat().st_size <= SHARD + 4096 for f in files[:-1])

    ckpt = Checkpoint(sharded)
    assert (ckpt.spec, ckpt.quant) == (TINY, "mxfp4")
    assert sorted(ckpt.names()) == sorted(tensors)
    for name, t in tensors.items():
        got = ckpt.get(name)
        assert got.dtype == t.dtype and torch.equal(got, t), name
    for f in files:  # the files also satisfy safetensors' own strict reader
        assert all(torch.equal(t, tensors[n]) for n, t in load_file(sharded / f).items())


def test_published_sizes_shard_as_published():
    """20b ships as 3 shards of <= 4.8 GB, 120b as 15, named -of- their last index."""
    for model, count in (("gpt-oss-20b", 3), ("gpt-oss-120b", 15)):
        shards = plan_shards(SPECS[model])
        assert list(shards)[-1] == f"model-{count - 1:05d}-of-{count - 1:05d}.safetensors" and len(shards) == count
        assert sum(len(names) for names in shards.values()) == len(SPECS[model].tensors())


def test_config_and_generation_config(sharded):
    cfg = json.loads((sharded / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "mxfp4"
    assert cfg["num_local_experts"] == TINY.num_local_experts
    gen = json.loads((sharded / "generation_config.json").read_text())
    assert gen == {"bos_token_id": 1020, "eos_token_id": [1021, 1022], "pad_token_id": 1022}
    assert generation_config(SPECS["gpt-oss-20b"]) == {"bos_token_id": 199998, "eos_token_id": [200002, 199999],
                                                       "pad_token_id": 199999}


def test_one_shard_is_a_single_model_safetensors(tmp_path, tensors):
    path = write_checkpoint(tmp_path / "one", TINY, reversed(list(tensors.items())))  # any order
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    ckpt = Checkpoint(path)
    assert all(torch.equal(ckpt.get(n), t) for n, t in tensors.items())


def test_bf16_layout(tmp_path):
    tensors = random_tensors(TINY, "bf16")
    ckpt = Checkpoint(write_checkpoint(tmp_path / "bf16", TINY, tensors.items(), quant="bf16"))
    assert ckpt.quant == "bf16"
    assert "quantization_config" not in json.loads((ckpt.path / "config.json").read_text())
    down = "model.layers.1.mlp.experts.down_proj"
    assert torch.equal(ckpt.get(down), tensors[down])


def test_a_hub_download_loads_unchanged(tmp_path, tensors):
    """Shards as HF's converter saves them (safetensors.save_file, tensors sorted by the library),
    a sorted index, and the other files of the hub repository beside them."""
    path = tmp_path / "gpt-oss-tiny"
    (path / "original").mkdir(parents=True)
    names = sorted(tensors)
    split = {"model-00000-of-00001.safetensors": names[:40], "model-00001-of-00001.safetensors": names[40:]}
    for file, part in split.items():
        save_file({n: tensors[n] for n in part}, path / file)
    (path / INDEX).write_text(json.dumps({"metadata": {"total_size": 1},
                                          "weight_map": {n: f for f, part in split.items() for n in part}}))
    cfg = TINY.to_hf_config("mxfp4")
    del cfg["torch_dtype"]  # the published config has none
    (path / "config.json").write_text(json.dumps(cfg))
    for extra in ("generation_config.json", "tokenizer.json", "chat_template.jinja", "original/config.json"):
        (path / extra).write_text("{}")
    ckpt = Checkpoint(path)
    assert ckpt.spec == TINY and ckpt.quant == "mxfp4"
    w = mxfp4.dequantize(ckpt.get("model.layers.0.mlp.experts.down_proj_blocks"),
                         ckpt.get("model.layers.0.mlp.experts.down_proj_scales"))
    assert w.shape == (TINY.num_local_experts, TINY.hidden_size, TINY.intermediate_size)


def test_write_checkpoint_rejects_bad_input_and_leaves_no_partial_file(tmp_path, tensors):
    bad = dict(tensors)
    bad["model.norm.weight"] = torch.zeros(3, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"model\.norm\.weight .*\[3\], expected .*\[128\]"):
        write_checkpoint(tmp_path / "a", TINY, bad.items(), max_shard_bytes=SHARD)
    assert not list((tmp_path / "a").iterdir())
    with pytest.raises(ValueError, match="not a tensor of gpt-oss-tiny"):
        write_checkpoint(tmp_path / "b", TINY, [("model.extra", torch.zeros(1))])
    with pytest.raises(ValueError, match="were not given"):
        write_checkpoint(tmp_path / "c", TINY, list(tensors.items())[:-1], max_shard_bytes=SHARD)
    assert not list((tmp_path / "c").glob("*.partial"))
    done = write_checkpoint(tmp_path / "d", TINY, tensors.items())
    with pytest.raises(ValueError, match="already holds safetensors"):
        write_checkpoint(done, TINY, tensors.items())


# ---- validation errors --------------------------------------------------------------------------

def test_truncated_shard(sharded):
    shard = sorted(sharded.glob("*.safetensors"))[1]
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size - 100)
    [p] = problems(sharded)
    assert p == f"{shard.name}: truncated: the header describes {size:,} bytes, the file has {size - 100:,}"


def test_tensor_deleted_from_the_index(sharded):
    index = index_of(sharded)
    file = index["weight_map"].pop("model.layers.2.mlp.router.bias")
    (sharded / INDEX).write_text(json.dumps(index))
    ps = problems(sharded)
    assert f"{file}: holds model.layers.2.mlp.router.bias, which {INDEX} does not list" in ps
    assert f"{INDEX}: tensor model.layers.2.mlp.router.bias is missing (expected BF16 [8])" in ps


def test_changed_shape(sharded):
    name = "model.layers.1.self_attn.q_proj.weight"
    file = index_of(sharded)["weight_map"][name]
    rewrite(sharded / file, lambda t: t.__setitem__(name, t[name][:128].contiguous()))
    assert problems(sharded) == [f"{file}: {name} has shape [128, 128], expected [256, 128]"]


def test_wrong_dtype(sharded):
    name = "model.layers.3.self_attn.sinks"
    file = index_of(sharded)["weight_map"][name]
    rewrite(sharded / file, lambda t: t.__setitem__(name, t[name].float()))
    assert problems(sharded) == [f"{file}: {name} has dtype F32, expected BF16"]


def test_unexpected_tensor(sharded):
    index = index_of(sharded)
    file = index["weight_map"]["model.norm.weight"]
    rewrite(sharded / file, lambda t: t.__setitem__("model.layers.0.mlp.gate.weight", torch.zeros(2, 3)))
    index["weight_map"]["model.layers.0.mlp.gate.weight"] = file
    (sharded / INDEX).write_text(json.dumps(index))
    assert problems(sharded) == [f"{file}: unexpected tensor model.layers.0.mlp.gate.weight F32 [2, 3] "
                                 "(not part of gpt-oss-tiny in mxfp4 layout)"]
    assert Checkpoint(sharded, validate=False).get("model.layers.0.mlp.gate.weight").shape == (2, 3)


def test_index_points_to_a_missing_file(sharded):
    index = index_of(sharded)
    file = sorted(set(index["weight_map"].values()))[1]
    first = next(n for n, f in index["weight_map"].items() if f == file)
    count = sum(f == file for f in index["weight_map"].values())
    (sharded / file).unlink()
    assert problems(sharded) == [f"{INDEX}: maps {count} tensors (e.g. {first}) to {file}, which does not exist"]


def test_config_contradicting_the_tensors(sharded):
    cfg = json.loads((sharded / "config.json").read_text())
    cfg["num_local_experts"] = 16
    (sharded / "config.json").write_text(json.dumps(cfg))
    file = index_of(sharded)["weight_map"]["model.layers.0.mlp.router.weight"]
    assert problems(sharded) == [f"config.json says num_local_experts = 16, but model.layers.0.mlp.router.weight in "
                                 f"{file} has shape [8, 128] (num_local_experts = 8)"]


def test_config_without_quantization_config_for_mxfp4_tensors(sharded):
    cfg = json.loads((sharded / "config.json").read_text())
    del cfg["quantization_config"]
    (sharded / "config.json").write_text(json.dumps(cfg))
    [p] = problems(sharded)
    assert p.startswith("config.json: has no quantization_config, but the expert weights are MXFP4")


def test_missing_config(sharded):
    (sharded / "config.json").unlink()
    assert problems(sharded) == ["config.json is missing"]


def test_every_problem_is_reported_at_once(sharded):
    index = index_of(sharded)
    sinks, norm = "model.layers.3.self_attn.sinks", "model.layers.1.input_layernorm.weight"
    rewrite(sharded / index["weight_map"][sinks], lambda t: t.__setitem__(sinks, t[sinks].float()))
    rewrite(sharded / index["weight_map"][norm], lambda t: t.pop(norm))
    ps = problems(sharded)
    assert len(ps) == 3 and any("dtype F32" in p for p in ps)
    assert any(re.search(rf"maps {re.escape(norm)} to .*, which does not hold it", p) for p in ps)
    assert any(f"tensor {norm} is missing" in p for p in ps)


# ---- open_weights -------------------------------------------------------------------------------

def test_open_weights(sharded):
    from harness.model.load_request import LoadRequest
    from harness.model.synthetic import SyntheticWeights
    from harness.model.weights import open_weights

    synthetic = open_weights(LoadRequest(TINY, "mxfp4", None, seed=4, router_skew=0.5))
    assert isinstance(synthetic, SyntheticWeights) and (synthetic.seed, synthetic.router_skew) == (4, 0.5)
    assert isinstance(open_weights(LoadRequest(TINY, "bf16", sharded)), Checkpoint)
    with pytest.raises(CheckpointError) as e:
        open_weights(LoadRequest(TINY.with_(sliding_window=32), "mxfp4", sharded))
    assert e.value.problems == ["config.json has sliding_window = 16, the requested gpt-oss-tiny has 32"]
