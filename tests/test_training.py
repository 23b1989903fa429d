"""mobilevitv2 train: learning, DDP equal to one process, resume equal to an uninterrupted run, the saved
checkpoint, segmentation end to end, and a clear error for each kind of bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("torchvision", reason="training needs the train extra")

from mobilevitv2 import MobileViTV2Config, MobileViTV2ForImageClassification, MobileViTV2ForSemanticSegmentation  # noqa: E402
from mobilevitv2.cli import main  # noqa: E402
from mobilevitv2.training import TrainingArguments, train  # noqa: E402
from mobilevitv2.training.run_directory import state_path  # noqa: E402
from training_data import make_classification, make_segmentation  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = dict(image_size=48, batch_size=8, workers=0, progress=False, warmup_epochs=0.5)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    make_classification(str(root / "data"))
    # A small checkpoint without dropout (so that runs differing only in their process count compute the same).
    config = MobileViTV2Config.from_width(0.5, num_labels=3, classifier_dropout_prob=0.0)
    torch.manual_seed(0)
    MobileViTV2ForImageClassification(config).save_pretrained(root / "start")
    return root


@pytest.fixture(scope="module")
def shapes_seg(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes_seg")
    num_labels = make_segmentation(str(root / "data"))
    config = MobileViTV2Config.from_width(0.5, num_labels=num_labels, aspp_out_channels=32, output_stride=16)
    torch.manual_seed(0)
    MobileViTV2ForSemanticSegmentation(config).save_pretrained(root / "start")
    return root, num_labels


def records_of(out) -> list[dict]:
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def saved_state(out) -> dict:
    return torch.load(state_path(str(out)), weights_only=False)


def assert_states_close(a: dict, b: dict, atol: float) -> None:
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            x, y = a[part][key], b[part][key]
            if x.is_floating_point():
                torch.testing.assert_close(x, y, atol=atol, rtol=atol, msg=lambda m: f"{part}.{key}: {m}")
            else:
                assert torch.equal(x, y), f"{part}.{key}"


def test_learns_the_shapes_and_writes_a_checkpoint_others_load(shapes, tmp_path):
    out = tmp_path / "run"
    started = time.perf_counter()
    records = train(TrainingArguments(data=str(shapes / "data"), out=str(out), width=0.5, epochs=7, lr=5e-3, min_scale=0.6, **FAST))
    seconds = time.perf_counter() - started
    best = max(max(r["val_top1"], r["val_top1_ema"]) for r in records)
    assert best >= 0.9, (records, f"{seconds:.0f} s")
    assert records == records_of(out)
    for r in records:
        assert {"epoch", "train_loss", "lr", "val_top1"} <= r.keys() and 0 <= r["val_top1"] <= 1
    assert os.path.getsize(out / "metrics.png") > 1000
    # The checkpoint: our classes and transformers' load it and agree; the labels are the folder names.
    transformers = pytest.importorskip("transformers")
    ours = MobileViTV2ForImageClassification.from_pretrained(out)
    assert ours.config.id2label == {0: "blue", 1: "green", 2: "red"}
    theirs = transformers.MobileViTV2ForImageClassification.from_pretrained(out).eval()
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, theirs(x).logits, atol=1e-5, rtol=1e-5)
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["crop_size"] == {"height": 48, "width": 48} and processor["do_flip_channel_order"] is True
    # predict with the result labels an unseen red shape as red
    code = main(["predict", str(shapes / "data" / "val" / "red" / "000.png"), "--model", str(out), "--json"])
    assert code == 0


def test_resumed_run_equals_an_uninterrupted_one(shapes, tmp_path):
    common = dict(data=str(shapes / "data"), width=0.5, epochs=3, **FAST)  # dropout on: the RNG state matters
    train(TrainingArguments(out=str(tmp_path / "whole"), **common))
    train(TrainingArguments(out=str(tmp_path / "parts"), stop_after_epoch=1, **common))
    assert len(records_of(tmp_path / "parts")) == 1
    train(TrainingArguments(out=str(tmp_path / "parts"), resume=True, **common))
    whole, parts = saved_state(tmp_path / "whole"), saved_state(tmp_path / "parts")
    assert_states_close(whole, parts, atol=0)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(records_of(tmp_path / "whole")) == strip(records_of(tmp_path / "parts"))
    assert whole["optimizer"]["state"].keys() == parts["optimizer"]["state"].keys()


def test_two_processes_train_the_same_weights_as_one(shapes, tmp_path):
    """torchrun with 2 gloo processes, each half of the global batch, BatchNorm statistics over both, equal to
    one process within float rounding. One epoch (9 steps) of SGD at a modest rate: training amplifies
    rounding (one process on 1 and on 2 threads differs by ~1e-5 after these steps, by ~3e-2 after twice as
    many), and Adam's first steps are about lr * sign(gradient), so a gradient that rounding moves across zero
    moves its weight by up to 2 lr. Without the global BatchNorm statistics the weights differ by far more."""
    argv = ["train", str(shapes / "data"), "--model", str(shapes / "start"), "--image-size", "48", "--epochs", "1",
            "--batch-size", "8", "--workers", "0", "--no-progress", "--ema-decay", "0.99", "--optimizer", "sgd",
            "--lr", "0.01"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]

    def run(out, processes, *extra):
        command = [*launcher, "-m", "mobilevitv2"] if processes == 2 else [sys.executable, "-m", "mobilevitv2"]
        done = subprocess.run([*command, *argv, "--out", str(tmp_path / out), *extra], capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stderr, saved_state(tmp_path / out)

    _, one = run("one", 1)
    log, two = run("two", 2)
    assert "2 process(es)" in log
    assert_states_close(one, two, atol=1e-4)
    a, b = one["records"][0], two["records"][0]
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5) and a["val_top1"] == b["val_top1"]
    _, unsynchronised = run("two_local_bn", 2, "--no-sync-batchnorm")
    differences = [(one["model"][k] - unsynchronised["model"][k]).abs().max().item() for k in one["model"] if k.endswith("weight")]
    assert max(differences) > 2e-3, "the check cannot tell per-process BatchNorm statistics from global ones"


def test_segmentation_end_to_end(shapes_seg, tmp_path):
    root, num_labels = shapes_seg
    out = tmp_path / "seg"
    code = main(["train", str(root / "data"), "--model", str(root / "start"), "--out", str(out), "--image-size", "64",
                 "--epochs", "2", "--batch-size", "4", "--workers", "0", "--no-progress"])  # fmt: skip
    assert code == 0
    records = records_of(out)
    assert len(records) == 2 and all(0 <= r["val_miou"] <= 1 and 0 <= r["val_pixel_accuracy"] <= 1 for r in records)
    model = MobileViTV2ForSemanticSegmentation.from_pretrained(out)
    assert model.config.num_labels == num_labels and model.config.output_stride == 16
    mask = tmp_path / "mask.png"
    assert main(["segment", str(root / "data" / "val" / "images" / "000.jpg"), "--model", str(out), "--out", str(mask)]) == 0
    assert Image.open(mask).size == (64, 64)


def test_fine_tuning_replaces_a_head_of_another_size(shapes, tmp_path, capsys):
    config = MobileViTV2Config.from_width(0.5, num_labels=7)
    MobileViTV2ForImageClassification(config).save_pretrained(tmp_path / "seven")
    start = MobileViTV2ForImageClassification.from_pretrained(tmp_path / "seven")
    train(TrainingArguments(data=str(shapes / "data"), out=str(tmp_path / "run"), model=str(tmp_path / "seven"), epochs=1, lr=1e-9, ema_decay=0, **FAST))
    assert "new head for 3 labels (the checkpoint has 7)" in capsys.readouterr().err
    tuned = MobileViTV2ForImageClassification.from_pretrained(tmp_path / "run")
    assert tuned.classifier.weight.shape == (3, start.classifier.weight.shape[1])
    # lr 1e-9: the backbone is (to float precision) the checkpoint's
    a, b = start.state_dict(), tuned.state_dict()
    torch.testing.assert_close(a["mobilevitv2.conv_stem.convolution.weight"], b["mobilevitv2.conv_stem.convolution.weight"], atol=1e-6, rtol=0)


# ----- bad input ---------------------------------------------------------------------------------------------
def error_of(argv, capsys) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 1, err
    lines = [line for line in err.strip().splitlines() if not line.startswith("train: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def copy_data(shapes, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shapes / "data", data)
    return data


def base_argv(data, out):
    return ["train", data, "--out", out, "--width", "0.5", "--image-size", "48", "--epochs", "1", "--batch-size", "8", "--workers", "0", "--no-progress"]


def test_missing_and_empty_splits(shapes, tmp_path, capsys):
    data = copy_data(shapes, tmp_path)
    shutil.rmtree(data / "val")
    assert "val: no such folder" in error_of(base_argv(data, tmp_path / "o1"), capsys)
    shutil.rmtree(data / "train")
    (data / "train").mkdir()
    assert "no class folders" in error_of(base_argv(data, tmp_path / "o2"), capsys)


def test_a_class_folder_without_images(shapes, tmp_path, capsys):
    data = copy_data(shapes, tmp_path)
    for f in (data / "val" / "green").iterdir():
        f.unlink()
    message = error_of(base_argv(data, tmp_path / "out"), capsys)
    assert "val/green" in message and "no image files" in message


def test_a_truncated_image_is_skipped_and_counted_or_fails_with_strict(shapes, tmp_path, capsys):
    data = copy_data(shapes, tmp_path)
    victim = data / "train" / "red" / "003.png"
    victim.write_bytes(victim.read_bytes()[:200])
    assert main([str(a) for a in base_argv(data, tmp_path / "lenient")]) == 0
    err = capsys.readouterr().err
    assert "skipped:" in err and "003.png" in err
    assert records_of(tmp_path / "lenient")[0]["skipped"] == 1
    message = error_of([*base_argv(data, tmp_path / "strict"), "--strict"], capsys)
    assert "003.png" in message and "--strict" in message


def test_an_output_folder_holding_another_run(shapes, tmp_path, capsys):
    argv = base_argv(shapes / "data", tmp_path / "out")
    assert main([str(a) for a in argv]) == 0
    capsys.readouterr()
    assert "--resume" in error_of(argv, capsys) and "--overwrite" in error_of(argv, capsys)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert "other files" in error_of(base_argv(shapes / "data", tmp_path / "other"), capsys)
    assert "nothing to resume" in error_of([*base_argv(shapes / "data", tmp_path / "fresh"), "--resume"], capsys)
    assert main([str(a) for a in argv] + ["--overwrite"]) == 0
    assert len(records_of(tmp_path / "out")) == 1


def test_a_checkpoint_of_the_other_task(shapes, shapes_seg, tmp_path, capsys):
    root, _ = shapes_seg
    argv = ["train", shapes / "data", "--out", tmp_path / "o", "--model", root / "start", "--epochs", "1"]
    assert "MobileViTV2ForSemanticSegmentation checkpoint" in error_of(argv, capsys)


def segmentation_copy(shapes_seg, tmp_path):
    root, num_labels = shapes_seg
    data = tmp_path / "data"
    shutil.copytree(root / "data", data)
    argv = ["train", data, "--out", tmp_path / "out", "--model", root / "start", "--image-size", "64", "--epochs", "1",
            "--batch-size", "4", "--workers", "0", "--no-progress"]  # fmt: skip
    return data, argv


def test_a_mask_of_another_size(shapes_seg, tmp_path, capsys):
    data, argv = segmentation_copy(shapes_seg, tmp_path)
    mask = data / "train" / "masks" / "002.png"
    Image.open(mask).resize((40, 40)).save(mask)
    message = error_of(argv, capsys)
    assert "002.png" in message and "40x40" in message and "64x64" in message


def test_a_mask_value_that_is_no_class(shapes_seg, tmp_path, capsys):
    data, argv = segmentation_copy(shapes_seg, tmp_path)
    mask = data / "val" / "masks" / "001.png"
    values = np.asarray(Image.open(mask)).copy()
    values[0, :3] = 255  # ignore: fine
    values[1, 0] = 9
    Image.fromarray(values, mode="L").save(mask)
    message = error_of(argv, capsys)
    assert "001.png" in message and "mask value 9" in message


def test_fused_attention_trains_like_the_reference(tmp_path, monkeypatch):
    """The fused separable attention in training (Triton, under the interpreter on the CPU; on a GPU
    ``--implementation fused`` picks it): its forward and backward run, and the run matches the reference run."""
    from mobilevitv2_kernels import backends

    if backends.unavailable_reason("triton", "cpu") is not None:
        pytest.skip(backends.unavailable_reason("triton", "cpu"))
    make_classification(str(tmp_path / "data"), per_class=(4, 2), size=64)
    calls = []
    real = backends.resolve

    def counting(backend, *args, **kwargs):
        chosen = real(backend, *args, **kwargs)
        calls.append(chosen)
        return chosen

    monkeypatch.setattr(backends, "resolve", counting)
    common = dict(data=str(tmp_path / "data"), width=0.5, epochs=1, image_size=64, batch_size=4, workers=0,
                  progress=False, optimizer="sgd", lr=0.01, ema_decay=0)  # fmt: skip
    fused = train(TrainingArguments(out=str(tmp_path / "fused"), implementation="fused", attn_implementation="triton", **common))
    assert "triton" in calls, f"the fused attention never ran: {set(calls)}"
    calls.clear()
    reference = train(TrainingArguments(out=str(tmp_path / "reference"), **common))
    assert not calls
    assert fused[0]["train_loss"] == pytest.approx(reference[0]["train_loss"], rel=1e-4)
    assert_states_close({**saved_state(tmp_path / "fused"), "ema": {}}, {**saved_state(tmp_path / "reference"), "ema": {}}, atol=1e-4)
