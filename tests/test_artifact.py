"""The artifact's record of its own files: what the export wrote and verified is what is served, or nothing is."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil

import pytest

from tests.conftest import ROOT
from vitserve.artifact import check_files, read_manifest, write_manifest
from vitserve.errors import ArtifactError
from vitserve.export.quantize import quantize_artifact
from vitserve.export.triton import write_triton_repo
from vitserve.runtimes import load as load_backend


@pytest.fixture
def copy(digits_artifact, tmp_path):
    out = tmp_path / "swin_digits"
    shutil.copytree(digits_artifact, out)
    return out


def test_the_manifest_records_every_other_file(digits_artifact):
    manifest = read_manifest(digits_artifact)
    assert set(manifest.files) == {"model.onnx", "labels.txt", "proof.npz"}
    for name, record in manifest.files.items():
        data = (digits_artifact / name).read_bytes()
        assert record == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    check_files(digits_artifact, manifest)


def test_a_changed_byte_a_short_copy_or_a_missing_file_is_refused(copy, tmp_path):
    model = copy / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 1  # one bit, same size: only the checksum tells
    model.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="model.onnx is not the file its export wrote and verified"):
        load_backend(copy)
    with pytest.raises(ArtifactError, match="SHA-256 differs"):
        write_triton_repo(copy, tmp_path / "repo")
    assert not (tmp_path / "repo" / "swin_digits").exists()
    with pytest.raises(ArtifactError, match="SHA-256 differs"):
        quantize_artifact(copy, ROOT / "examples", tmp_path / "int8")
    assert not (tmp_path / "int8").exists()

    model.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ArtifactError, match=f"has {len(data) // 2} bytes where its export wrote {len(data)}"):
        load_backend(copy, "openvino")

    (copy / "labels.txt").unlink()
    with pytest.raises(ArtifactError, match="has no labels.txt, which its export wrote"):
        check_files(copy, read_manifest(copy))


def test_a_manifest_without_the_record_loads_with_a_warning(copy, caplog):
    manifest = json.loads((copy / "vitserve.json").read_text())
    del manifest["files"]  # as vitserve wrote manifests before it recorded files
    (copy / "vitserve.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING):
        load_backend(copy)
    assert "did not record its files' checksums" in caplog.text


def test_write_manifest_records_the_folder_as_it_is(copy):
    (copy / "labels.txt").write_text("".join(f"digit {d}\n" for d in range(10)))
    with pytest.raises(ArtifactError, match="labels.txt"):
        check_files(copy, read_manifest(copy))
    write_manifest(copy, read_manifest(copy))  # what quantize and every export do last
    check_files(copy, read_manifest(copy))
    assert load_backend(copy).manifest.files["labels.txt"]["bytes"] == len("digit 0\n") * 10
