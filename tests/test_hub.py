"""Loading: published names through a pre-populated Hub cache (HF_HUB_OFFLINE=1, set in conftest),
local published files, our own format, the bundled default, and hostile files."""

import json
import os
import pickle

import numpy as np
import pytest
import timm
import torch

import cast
from cast.weights import PUBLISHED
from tests.helpers import make_tiny_model, populate_hub_cache, random_state_dict, write_deit_file, write_moco_file


@pytest.fixture(scope="module")
def published_cache(hub_cache, tmp_path_factory):
    """The Hub cache holding the DeiT and MoCo cast_small files (random weights, exact layouts)."""
    tmp = tmp_path_factory.mktemp("published")
    deit_sd = random_state_dict("deit_family_cast_small", seed=11)
    moco_sd = random_state_dict("moco_family_cast_small", seed=12)
    files = {
        PUBLISHED["cast_small.deit_in1k"].hub_file: write_deit_file(tmp / "deit.pth", deit_sd),
        PUBLISHED["cast_small.mocov3_in1k"].hub_file: write_moco_file(tmp / "moco.pth.tar", moco_sd),
    }
    commit = populate_hub_cache(hub_cache, "twke/CAST", files)
    return {"deit": deit_sd, "moco": moco_sd, "commit": commit}


def test_offline_hub_load_of_published_names(published_cache):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    model = cast.load_model("cast_small.deit_in1k")
    assert torch.equal(model.state_dict()["head.weight"], published_cache["deit"]["head.weight"])
    assert model.info.weights == "cast_small.deit_in1k" and model.info.family == "deit"
    assert model.info.source == "hf://twke/CAST/" + PUBLISHED["cast_small.deit_in1k"].hub_file
    assert not model.training
    moco = cast.load_model("cast_small.mocov3_in1k", revision=published_cache["commit"])
    assert torch.equal(moco.state_dict()["pos_embed"], published_cache["moco"]["pos_embed"])
    assert moco.info.superpixels.params["histogram_bins"] == 15


def test_offline_and_not_cached_is_a_clear_error(published_cache):
    with pytest.raises(cast.WeightsNotAvailableError, match="HF_HUB_OFFLINE") as e:
        cast.load_model("cast_base.mocov3_in1k")
    assert "cast_base" in str(e.value) and "bundled" in str(e.value)


def test_timm_pretrained_uses_the_same_loader(published_cache):
    model = timm.create_model("cast_small", pretrained=True, pos_embed="learned", num_classes=1000)
    assert torch.equal(model.state_dict()["norm.weight"], published_cache["deit"]["norm.weight"])


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "checkpoint_0099.pth.tar"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "hook": _Payload(str(marker))}, bad)
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps({"hook": _Payload(str(marker))}))
    for f in (bad, legacy):
        with pytest.raises(cast.UnsafeCheckpointError, match="Nothing from the file was executed"):
            cast.load_model(f)
    assert not marker.exists()


def test_malicious_pickle_from_the_hub_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pth"
    torch.save({"model": {}, "args": _Payload(str(marker))}, bad)
    cache = tmp_path / "cache"
    populate_hub_cache(cache, "twke/CAST", {PUBLISHED["cast_small.deit_in1k"].hub_file: bad})
    with pytest.raises(cast.UnsafeCheckpointError):
        cast.load_model("cast_small.deit_in1k", cache_dir=cache)
    assert not marker.exists()


def test_corrupt_and_foreign_files(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(20):  # random bytes, some of which start like a pickle
        junk = tmp_path / f"junk{i}.pth"
        junk.write_bytes((b"\x80\x04" if i % 2 else b"") + rng.integers(0, 256, 2048, dtype=np.uint8).tobytes())
        with pytest.raises(cast.CheckpointFormatError, match=f"junk{i}.pth"):
            cast.load_model(junk)
    plain = tmp_path / "plain.pth"
    plain.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}, protocol=4))  # safe data, not torch's format
    with pytest.raises(cast.CheckpointFormatError):
        cast.load_model(plain)
    truncated = tmp_path / "truncated.pth"
    torch.save({"w": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:1500])
    with pytest.raises(cast.CheckpointFormatError, match="truncated.pth"):
        cast.load_model(truncated)
    foreign = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 512)}, foreign)
    with pytest.raises(cast.CastLoadError, match="resnet.pth"):
        cast.load_model(foreign)
    with pytest.raises(cast.WeightsNotAvailableError, match="unknown model source"):
        cast.load_model("no/such/thing.pth")


def _same_outputs(a, b):
    x = torch.randn(1, 3, 64, 64)
    sp = (torch.arange(64)[:, None] // 8 * 8 + torch.arange(64)[None] // 8)[None]
    with torch.no_grad():
        return torch.equal(a(x, sp), b(x, sp))


def test_own_format_round_trip_with_mixin(tmp_path):
    model = make_tiny_model(seed=3)
    model.save_pretrained(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} >= {"config.json", "model.safetensors", "README.md"}  # small: one file
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["architecture"] == "cast_tiny" and config["model_args"]["num_clusters"] == [16, 8, 4, 2]
    again = cast.CAST.from_pretrained(tmp_path / "m")
    assert _same_outputs(model, again)
    assert again.info.class_names == model.info.class_names
    loaded = cast.load_model(tmp_path / "m")
    assert _same_outputs(model, loaded) and loaded.info.superpixels == model.info.superpixels


def test_own_format_from_an_offline_hub_repo(tmp_path, hub_cache):
    model = make_tiny_model(seed=4)
    folder = model.save_pretrained(tmp_path / "m") or tmp_path / "m"
    populate_hub_cache(hub_cache, "someone/cast-tiny-test",
                       {n: folder / n for n in ("config.json", "model.safetensors")})
    loaded = cast.load_model("someone/cast-tiny-test")
    assert _same_outputs(model, loaded) and loaded.info.source == "hf://someone/cast-tiny-test"
    assert _same_outputs(model, cast.CAST.from_pretrained("someone/cast-tiny-test"))


def test_own_format_errors(tmp_path):
    model = make_tiny_model(seed=5)
    folder = tmp_path / "m"
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_args"]["embed_dim"] = 96
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(cast.CheckpointMismatchError):
        cast.load_model(folder)
    config["architecture"] = "resnet50"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(cast.WeightsNotAvailableError, match="unknown architecture"):
        cast.load_model(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(cast.CheckpointFormatError):
        cast.load_model(folder)


def test_bundled_missing_then_present(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("CAST_BUNDLED_DIR", str(tmp_path / "empty"))
    with pytest.raises(cast.WeightsNotAvailableError, match="bundled"):
        cast.load_model("bundled")
    monkeypatch.setenv("CAST_BUNDLED_DIR", str(tiny_model_dir))
    model = cast.load_model("bundled")
    assert model.info.source == "bundled" and model.info.class_names[0] == "circle"
    tree = cast.Predictor("bundled")(torch.zeros(40, 50, 3, dtype=torch.uint8).numpy())
    assert tree.size == (50, 40)


def test_overrides_replace_metadata(tiny_model_dir):
    from cast.superpixels import SLIC_DEFAULT

    model = cast.load_model(tiny_model_dir, superpixels=SLIC_DEFAULT, drop_path_rate=0.0)
    assert model.info.superpixels.method == "slic"


def test_sharded_weights_round_trip_locally_and_from_an_offline_hub_repo(tmp_path, hub_cache):
    from cast.models.hub_mixin import write_own_format

    model = make_tiny_model(seed=6)
    folder = write_own_format(model, tmp_path / "sharded", dtype=torch.float16, max_shard_size="100KB")
    shards = sorted(folder.glob("model-*-of-*.safetensors"))
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(shards) >= 3 and set(index["weight_map"].values()) == {f.name for f in shards}
    assert not (folder / "model.safetensors").exists() and all(f.stat().st_size <= 150_000 for f in shards)
    # tensors the model names twice (blocks.i and blocks{l}.i) are stored once
    assert "blocks.0.attn.qkv.weight" in index["weight_map"] or "blocks1.0.attn.qkv.weight" in index["weight_map"]
    assert not {"blocks.0.attn.qkv.weight", "blocks1.0.attn.qkv.weight"} <= set(index["weight_map"])
    half = {k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    for loaded in (cast.load_model(folder), cast.CAST.from_pretrained(folder)):
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in half.items())
    populate_hub_cache(hub_cache, "someone/cast-tiny-sharded", {f.name: f for f in folder.iterdir()})
    from_hub = cast.load_model("someone/cast-tiny-sharded")
    assert all(torch.equal(from_hub.state_dict()[k], v) for k, v in half.items())
    write_own_format(model, folder)  # rewritten as one file: no stale shards stay behind
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("model-*-of-*.safetensors"))
    (folder / "model.safetensors").unlink()
    with pytest.raises(cast.WeightsNotAvailableError, match="no model.safetensors"):
        cast.load_model(folder)


def test_single_files_written_before_sharding_still_load(tmp_path):
    from safetensors.torch import save_model

    from cast.models.hub_mixin import own_format_config

    model = make_tiny_model(seed=7)
    folder = tmp_path / "legacy"
    folder.mkdir()
    save_model(model, str(folder / "model.safetensors"))  # no huggingface_hub metadata in the header
    (folder / "config.json").write_text(json.dumps(own_format_config(model)))
    assert _same_outputs(model, cast.load_model(folder))


UNREACHABLE_SCRIPT = r"""
import json, sys, time
import cast
from cast import hub
from huggingface_hub import get_session

calls = []
session = get_session()
head = session.head
session.head = lambda *a, **k: calls.append(a) or head(*a, **k)
t0 = time.perf_counter()
errors = []
for name in ("cast_small_deep.mocov3_in1k", "cast_base.mocov3_in1k", "someone/own-format-repo"):
    try:
        cast.load_model(name)
    except cast.WeightsNotAvailableError as e:
        errors.append([name, e.short, str(e)])
cached = cast.load_model("cast_small.mocov3_in1k")  # in the cache: loads without the network
print(json.dumps({"seconds": time.perf_counter() - t0, "probes": len(calls), "errors": errors,
                  "cached": cached.info.weights, "reachable": hub.reachable()}))
"""


@pytest.mark.slow  # a subprocess without HF_HUB_OFFLINE
def test_an_unreachable_hub_is_found_out_once_and_fast(published_cache, hub_cache, tmp_path):
    """No HF_HUB_OFFLINE, the endpoint a closed loopback port: one probe, no retry ladder, clear
    errors for what is not cached, and what is cached still loads."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HUB_CACHE=str(hub_cache), CAST_HUB_TIMEOUT="2")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", UNREACHABLE_SCRIPT], env=env, cwd=root, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["probes"] == 1 and out["reachable"][0] is False and "Retrying" not in r.stderr
    assert [e[0] for e in out["errors"]] == ["cast_small_deep.mocov3_in1k", "cast_base.mocov3_in1k", "someone/own-format-repo"]
    for _, short, message in out["errors"]:
        assert short == "not in the local Hub cache and the Hub could not be reached"
        assert f"127.0.0.1:{port}" in message and "bundled" in message
    assert out["cached"] == "cast_small.mocov3_in1k"
