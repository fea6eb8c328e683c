"""The `vitserve` command as a user runs it: exit codes, messages, no tracebacks. Errors found before a model is built
run in this process (run_cli_here); everything else in a fresh process, as a user runs it."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from tests.conftest import ROOT, run_cli, run_cli_here


def _fails_cleanly(result, *fragments: str, code: int = 1) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_models_lists_aliases():
    result = run_cli("models")
    assert result.returncode == 0
    for alias in ("swin_t", "vit_b_16", "swinv2_t", "cait_xxs24", "swin_digits"):
        assert alias in result.stdout
    listed = json.loads(run_cli("models", "--json").stdout)
    assert {m["name"] for m in listed} >= {"swin_t", "deit_s_distilled"}


def test_unknown_model_suggests():
    _fails_cleanly(run_cli_here("export", "swin_tt"), "unknown model 'swin_tt'", "Did you mean: swin_t")


def test_offline_pretrained_names_the_options(tmp_path):
    result = run_cli("export", "deit_t", "--out", str(tmp_path / "a"), env={"HF_HOME": str(tmp_path / "hf")})
    _fails_cleanly(result, "model hub is not reachable", "--weights FILE", "--random-init")
    assert not (tmp_path / "a").exists()


def test_weights_and_random_init_are_exclusive():
    _fails_cleanly(run_cli_here("export", "swin_t", "--weights", "x.pth", "--random-init"), "not allowed with", code=2)


def test_missing_and_corrupt_weights(tmp_path):
    _fails_cleanly(run_cli_here("export", "swin_digits", "--weights", str(tmp_path / "none.pth")), "does not exist")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage" * 100)
    _fails_cleanly(run_cli_here("export", "swin_digits", "--weights", str(bad)), "cannot read", "is the file complete")


def test_checkpoint_for_other_head_size(tmp_path):
    from vitserve.models.build import build_model
    from vitserve.models.catalogue import SPECS

    ckpt = tmp_path / "ft.pth"
    model = build_model(SPECS["swin_digits"], random_init=True, num_classes=4).model
    torch.save({"state_dict": model.state_dict()}, ckpt)
    _fails_cleanly(run_cli_here("export", "swin_digits", "--weights", str(ckpt)), "--num-classes 4", "head.fc.weight")


@pytest.mark.slow  # exports in a fresh process
def test_fine_tuned_checkpoint_with_labels(tmp_path):
    from vitserve.models.build import build_model
    from vitserve.models.catalogue import SPECS

    ckpt = tmp_path / "ft.pth"
    torch.save(build_model(SPECS["swin_digits"], random_init=True, num_classes=3).model.state_dict(), ckpt)
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n")
    out = tmp_path / "ft"
    result = run_cli("export", "swin_digits", "--weights", str(ckpt), "--labels", str(labels), "--out", str(out))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "vitserve.json").read_text())
    assert manifest["num_classes"] == 3 and manifest["weights"]["source"] == "file"
    assert (out / "labels.txt").read_text() == "cat\ndog\nbird\n"
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("a\nb\n")
    _fails_cleanly(run_cli("export", "swin_digits", "--weights", str(ckpt), "--labels", str(wrong), "--num-classes",
                           "3"), "has 2 labels but the model has 3 classes")


@pytest.mark.slow  # exports in a fresh process
def test_img_size(tmp_path):
    """A checkpoint fine-tuned at 48 px: refused without --img-size (timm would interpolate it), exported with it."""
    import timm
    from safetensors.torch import save_file

    from vitserve.models.families.swin_digits import DIGITS_TIMM_KWARGS

    ckpt = tmp_path / "ft48.safetensors"
    save_file(timm.create_model("swin_tiny_patch4_window7_224", **dict(DIGITS_TIMM_KWARGS, img_size=48)).state_dict(),
              str(ckpt))
    _fails_cleanly(run_cli_here("export", "swin_digits", "--weights", str(ckpt)), "another input size or window")
    out = tmp_path / "ft48"
    result = run_cli("export", "swin_digits", "--weights", str(ckpt), "--img-size", "48", "--out", str(out))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "vitserve.json").read_text())
    assert manifest["input"]["shape"] == [-1, 3, 48, 48] and manifest["preprocess"]["input_size"] == [3, 48, 48]
    assert manifest["weights"]["timm_kwargs"]["img_size"] == 48
    _fails_cleanly(run_cli("export", "swin_digits", "--img-size", "0"), "must be at least 1", code=2)


@pytest.mark.parametrize("args", [["--dtype", "bf16"], ["--format", "openvino", "--dtype", "fp16"]],
                         ids=["onnx-bf16", "openvino-fp16"])
def test_precision_the_format_cannot_hold(args):
    _fails_cleanly(run_cli_here("export", "swin_digits", *args), "an ONNX artifact is fp32 or fp16")


@pytest.mark.slow  # exports in a fresh process
def test_fp16_onnx_is_not_quantized_again(tmp_path):
    out = tmp_path / "fp16"
    assert run_cli("export", "swin_digits", "--dtype", "fp16", "--out", str(out)).returncode == 0
    _fails_cleanly(run_cli("quantize", str(out), "--calib", str(ROOT / "examples")), "not an fp32 ONNX artifact (fp16)")


def test_out_dir_that_is_not_an_artifact(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    _fails_cleanly(run_cli_here("export", "swin_digits", "--out", str(tmp_path)), "is not a vitserve artifact")
    assert (tmp_path / "precious.txt").read_text() == "keep me"


@pytest.mark.slow  # exports in a fresh process
def test_export_then_classify_examples(tmp_path):
    out = tmp_path / "swin_digits"
    result = run_cli("export", "swin_digits", "--out", str(out), "--triton-repo", str(tmp_path / "triton"),
                     "--max-batch", "4")  # classify below runs 10 images in batches of 4
    assert result.returncode == 0, result.stderr
    assert "verifying" in result.stderr and "wrote" in result.stdout
    # readable by other users (a container's non-root server), though assembled in a private temporary folder
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    assert (tmp_path / "triton" / "swin_digits" / "1" / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()
    examples = sorted((ROOT / "examples").glob("digit_*.png"))
    assert examples
    result = run_cli("classify", str(out), *map(str, examples), "--top-k", "3", "--json")
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)["results"]
    for path, answer in zip(examples, answers):
        expected = path.stem.split("_")[1]
        assert answer["top_k"][0]["label"] == expected, (path.name, answer)
        assert len(answer["top_k"]) == 3
    # a folder: its images at any depth, sorted; other files skipped
    folder = tmp_path / "photos"
    for path in examples:
        target = folder / ("odd" if int(path.stem[-1]) % 2 else "even") / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    (folder / "notes.txt").write_text("not an image")
    result = run_cli("classify", str(out), str(folder), "--top-k", "1")
    assert result.returncode == 0, result.stderr
    shown = [line.rstrip(":") for line in result.stdout.splitlines() if not line.startswith(" ")]
    assert shown == [str(p) for p in sorted(folder.rglob("digit_*.png"))]
    for line in result.stdout.splitlines():
        if not line.startswith(" "):
            digit = line.rstrip(":")[-5]
        else:
            assert line.split()[1] == digit, result.stdout
    (tmp_path / "empty").mkdir()
    _fails_cleanly(run_cli("classify", str(out), str(tmp_path / "empty")), "no image files")


@pytest.mark.parametrize("args,message", [
    (["classify", "/nonexistent/dir", "x.png"], "is not a directory"),
])
def test_classify_errors(args, message):
    _fails_cleanly(run_cli_here(*args), message)


def test_classify_rejects_non_image(tmp_path, digits_artifact):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    _fails_cleanly(run_cli_here("classify", str(digits_artifact), str(junk)), "cannot read image")


@pytest.mark.slow  # exports in a fresh process
def test_verification_failure_exits_nonzero(tmp_path):
    """An impossible tolerance: the export must refuse, explain, and write no artifact."""
    out = tmp_path / "strict"
    result = run_cli("export", "swin_digits", "--out", str(out), "--atol", "1e-12")
    _fails_cleanly(result, "does not match the PyTorch model", "atol 1e-12", "Full report")
    assert not out.exists()
    assert (tmp_path / "strict.failed-verification.json").is_file()
