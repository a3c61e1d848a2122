import json

import pytest
import torch

from quamba_edge import artifact
from quamba_edge.artifact import read_manifest, save_artifact
from quamba_edge.errors import QuambaEdgeError
from quamba_edge.families.registry import load
from quamba_edge.quant.quamba import calibrate
from quamba_edge.quant.recipes import make_recipe


@pytest.fixture
def quantized(tiny_model):
    batches = [torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))]
    qmodel, calib = calibrate(tiny_model, batches, make_recipe("quamba"))
    return qmodel, calib


def load_artifact(path):
    loaded = load(path)
    return loaded.model, loaded.manifest


def _save(qmodel, calib, path):
    return save_artifact(qmodel, path, family="mamba", recipe=qmodel.recipe, source={"model": "tiny"},
                         calibration={"digest": "abc"}, scales=calib.scales)


def test_round_trip_gives_identical_logits(tmp_path, quantized):
    qmodel, calib = quantized
    path = _save(qmodel, calib, tmp_path / "art")
    loaded, manifest = load_artifact(path)
    ids = torch.randint(0, 256, (2, 20))
    assert torch.equal(loaded(ids), qmodel(ids))
    assert manifest["recipe"]["hadamard"] is True and manifest["family"] == "mamba"
    assert set(manifest["files"]) == {"weights.safetensors"}
    assert len(manifest["scales"]) == 2 and "u" in manifest["scales"][0]
    assert not list(tmp_path.glob(".art.*")), "temporary directories left behind"


def test_large_weights_are_sharded_and_load_memory_mapped(tmp_path, quantized, monkeypatch):
    """Past SHARD_BYTES the weights go in several safetensors files, each checksummed and listed in order; the
    loaded model equals the saved one and its int8 weights are the files' pages (copy-on-write), not a copy.
    A damaged shard is refused by name."""
    qmodel, calib = quantized
    monkeypatch.setattr(artifact, "SHARD_BYTES", 16 << 10)
    path = _save(qmodel, calib, tmp_path / "art")
    manifest = json.loads((path / "manifest.json").read_text())
    shards = manifest["weights"]
    assert len(shards) > 2 and shards[0] == f"weights-00001-of-{len(shards):05d}.safetensors"
    assert set(shards) == set(manifest["files"]) and manifest["format_version"] == 3
    loaded, _ = load_artifact(path)
    ids = torch.randint(0, 256, (2, 20))
    assert torch.equal(loaded(ids), qmodel(ids))
    assert loaded.state_dict().keys() == qmodel.state_dict().keys()
    with open("/proc/self/maps") as maps:
        mapped = {p for p in maps.read().split() if p.startswith(str(path))}
    assert mapped  # the weights are mmap'd from the artifact's files
    with open(path / shards[1], "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x01" if f.read(1) != b"\x01" else b"\x02")
    with pytest.raises(QuambaEdgeError, match=shards[1]):
        load_artifact(path)


def test_fp_artifact_round_trip(tmp_path, tiny_model):
    path = save_artifact(tiny_model, tmp_path / "fp", family="mamba", recipe=make_recipe("fp"), source={})
    loaded, _ = load_artifact(path)
    ids = torch.randint(0, 256, (1, 9))
    assert torch.equal(loaded(ids), tiny_model(ids))


def test_tampered_weights_are_refused(tmp_path, quantized):
    path = _save(*quantized, tmp_path / "art")
    weights = path / "weights.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-5] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(QuambaEdgeError, match="sha256.*re-run `quamba-edge calibrate`"):
        load_artifact(path)


def test_other_format_version_is_refused(tmp_path, quantized):
    path = _save(*quantized, tmp_path / "art")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = 99
    (path / "manifest.json").write_text(json.dumps(manifest))
    rebuild = "`quamba-edge calibrate --model tiny --recipe quamba"
    with pytest.raises(QuambaEdgeError, match=f"format v99.*reads v2.*{rebuild}"):
        read_manifest(path)


def test_missing_artifact_and_missing_file(tmp_path, quantized):
    with pytest.raises(QuambaEdgeError, match="no such artifact"):
        read_manifest(tmp_path / "none")
    path = _save(*quantized, tmp_path / "art")
    (path / "weights.safetensors").unlink()
    with pytest.raises(QuambaEdgeError, match="missing weights.safetensors"):
        read_manifest(path)


def test_refuses_to_overwrite_a_directory_that_is_not_an_artifact(tmp_path, quantized):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(QuambaEdgeError, match="not a quamba-edge artifact"):
        _save(*quantized, target)
    assert (target / "notes.txt").read_text() == "keep me"


def test_a_failed_write_leaves_the_previous_artifact_intact(tmp_path, quantized, monkeypatch):
    qmodel, calib = quantized
    path = _save(qmodel, calib, tmp_path / "art")
    before = (path / "manifest.json").read_text()

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(artifact, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        _save(qmodel, calib, path)
    assert (path / "manifest.json").read_text() == before
    load_artifact(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_a_manifest_that_does_not_checksum_the_weights_is_refused(tmp_path, quantized):
    path = _save(*quantized, tmp_path / "art")
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["files"]["weights.safetensors"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(QuambaEdgeError, match="does not list weights.safetensors"):
        load_artifact(path)


def test_only_a_parsable_manifest_makes_an_artifact(tmp_path, quantized):
    target = tmp_path / "other"
    target.mkdir()
    (target / "manifest.json").write_text("{not json")
    assert not artifact.is_artifact(target)
    (target / "manifest.json").write_text(json.dumps({"name": "someone else's manifest"}))
    assert not artifact.is_artifact(target)
    with pytest.raises(QuambaEdgeError, match="not a quamba-edge artifact"):
        _save(*quantized, target)
    assert artifact.is_artifact(_save(*quantized, tmp_path / "art"))


def test_a_failed_final_rename_puts_the_previous_artifact_back(tmp_path, quantized, monkeypatch):
    qmodel, calib = quantized
    path = _save(qmodel, calib, tmp_path / "art")
    before = (path / "manifest.json").read_text()
    real_rename = type(path).rename

    def rename(self, target):
        if self.name.startswith(".art.tmp-"):
            raise OSError("rename failed")
        return real_rename(self, target)

    monkeypatch.setattr(type(path), "rename", rename)
    with pytest.raises(OSError, match="rename failed"):
        _save(qmodel, calib, path)
    assert (path / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
