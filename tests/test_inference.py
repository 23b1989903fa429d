"""Predicting and segmenting folders of images: batched results equal one image at a time, JSON Lines and CSV
output written as it goes, unreadable images skipped and counted (or, with --strict, a one-line failure naming
the file), masks mirroring the input folders, and a 2-process torchrun giving the 1-process output."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from image_utils import synthetic_photo
from mobilevitv2 import (
    MobileViTV2Config,
    MobileViTV2ForImageClassification,
    MobileViTV2ForSemanticSegmentation,
    MobileViTV2ImageProcessor,
)
from mobilevitv2 import inference
from mobilevitv2.cli import main
from mobilevitv2.distributed import Context
from cli_utils import assert_one_line_error, run
from model_utils import randomize_

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = {0: "cat", 1: "dog", 2: "car", 3: "tree", 4: "boat", 5: "lamp"}
# (relative path, height, width, mode): several sizes and aspect ratios, so that segmentation batches hold
# images of different preprocessed shapes; greyscale and RGBA go through the processor's own conversion.
PHOTOS = [
    ("a.jpg", 64, 80, "RGB"),
    ("b.png", 80, 64, "RGB"),
    ("c.jpg", 64, 80, "RGB"),
    ("d.png", 72, 72, "L"),
    ("sub/e.png", 64, 80, "RGBA"),
    ("sub/f.jpg", 80, 64, "RGB"),
    ("sub/deeper/g.jpg", 64, 80, "RGB"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    cls = randomize_(MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=0.5, id2label=LABELS)), seed=3)
    cls.eval().save_pretrained(root / "cls")
    MobileViTV2ImageProcessor(size=64, crop_size=64).save_pretrained(root / "cls")
    seg_config = MobileViTV2Config(width_multiplier=0.5, aspp_out_channels=32, id2label={0: "background", 1: "sky", 2: "road", 3: "car"})
    randomize_(MobileViTV2ForSemanticSegmentation(seg_config), seed=4).eval().save_pretrained(root / "seg")
    MobileViTV2ImageProcessor(size=64).save_pretrained(root / "seg")
    for seed, (name, height, width, mode) in enumerate(PHOTOS):
        (root / "photos" / name).parent.mkdir(parents=True, exist_ok=True)
        synthetic_photo(height, width, seed=seed).convert(mode).save(root / "photos" / name)
    shutil.copytree(root / "photos", root / "damaged")
    jpeg = (root / "photos" / "a.jpg").read_bytes()
    (root / "damaged" / "sub" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("no images here")
    return root


def photo_paths(root, folder="photos"):
    return sorted(str(root / folder / name) for name, *_ in PHOTOS)


def one_at_a_time_predictions(model_dir, paths, k):
    model = MobileViTV2ForImageClassification.from_pretrained(model_dir)
    processor = MobileViTV2ImageProcessor.from_pretrained(model_dir)
    expected = {}
    for path in paths:
        with torch.no_grad():
            probs = model(processor(Image.open(path), return_tensors="pt")["pixel_values"]).logits.softmax(-1)[0]
        top = probs.topk(k)
        expected[path] = (top.indices.tolist(), top.values.tolist())
    return expected


def assert_same_predictions(records, expected):
    assert [r["image"] for r in records] == list(expected)
    for record in records:
        indices, values = expected[record["image"]]
        assert [p["index"] for p in record["predictions"]] == indices
        assert [p["label"] for p in record["predictions"]] == [LABELS[i] for i in indices]
        assert np.allclose([p["probability"] for p in record["predictions"]], values, atol=1e-5)


def read_jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def read_csv(path, k):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    records = []
    for row in rows:
        record = {"image": row["image"]}
        if row["error"]:
            record["error"] = row["error"]
        else:
            record["predictions"] = [
                {"index": int(row[f"top{r}_index"]), "label": row[f"top{r}_label"], "probability": float(row[f"top{r}_probability"])}
                for r in range(1, k + 1)
            ]
        records.append(record)
    return records


# ----- predict ---------------------------------------------------------------------------------------------------
def test_folder_predictions_to_jsonl_and_csv_equal_one_image_at_a_time(files, capsys, tmp_path):
    expected = one_at_a_time_predictions(files / "cls", photo_paths(files), k=3)
    base = ["predict", files / "photos", "--model", files / "cls", "--top-k", "3", "--batch-size", "3"]
    code, out, err = run(base + ["--output", tmp_path / "out" / "preds.jsonl", "--workers", "0"], capsys)
    assert code == 0 and "wrote" in out and err == ""
    assert_same_predictions(read_jsonl(tmp_path / "out" / "preds.jsonl"), expected)
    # the same through a DataLoader worker process, to CSV
    code, out, err = run(base + ["--output", tmp_path / "preds.csv", "--workers", "1"], capsys)
    assert code == 0 and err == ""
    with open(tmp_path / "preds.csv", newline="") as f:
        assert next(csv.reader(f)) == inference.csv_header(3)
    assert_same_predictions(read_csv(tmp_path / "preds.csv", 3), expected)
    # --format overrides the extension
    code, _, _ = run(base + ["--output", tmp_path / "preds.txt", "--format", "jsonl", "--workers", "0"], capsys)
    assert code == 0
    assert_same_predictions(read_jsonl(tmp_path / "preds.txt"), expected)


def test_predict_files_api(files):
    model = MobileViTV2ForImageClassification.from_pretrained(files / "cls")
    processor = MobileViTV2ImageProcessor.from_pretrained(files / "cls")
    paths = photo_paths(files)
    expected = one_at_a_time_predictions(files / "cls", paths, k=2)
    records = list(inference.predict_files(model, processor, paths, batch_size=4, top_k=2))
    assert_same_predictions(records, expected)
    # one rank of two: images 1, 3, 5
    shard = list(inference.predict_files(model, processor, paths, batch_size=4, top_k=2, ctx=Context(rank=1, world_size=2)))
    assert [r["image"] for r in shard] == paths[1::2]


def test_predictions_are_written_as_batches_finish(files, capsys, tmp_path, monkeypatch):
    """A run that dies keeps the records of the batches it finished."""
    real_forward = MobileViTV2ForImageClassification.forward
    calls = []

    def dies_on_the_third_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(MobileViTV2ForImageClassification, "forward", dies_on_the_third_batch)
    output = tmp_path / "preds.jsonl"
    with pytest.raises(RuntimeError, match="out of memory"):
        main(["predict", str(files / "photos"), "--model", str(files / "cls"), "--output", str(output), "--batch-size", "2", "--workers", "0"])
    expected = one_at_a_time_predictions(files / "cls", photo_paths(files)[:4], k=5)
    assert_same_predictions(read_jsonl(output), expected)


def test_unreadable_image_skipped_and_counted_or_strict(files, capsys, tmp_path):
    truncated = str(files / "damaged" / "sub" / "truncated.jpg")
    argv = ["predict", files / "damaged", "--model", files / "cls", "--workers", "0", "--batch-size", "4"]
    code, _, err = run(argv + ["--output", tmp_path / "preds.jsonl"], capsys)
    assert code == 0
    assert err.strip().splitlines() == ["mobilevitv2 predict: skipped 1 unreadable image (--strict to stop at the first)"]
    records = read_jsonl(tmp_path / "preds.jsonl")
    assert len(records) == len(PHOTOS) + 1
    bad = [r for r in records if "error" in r]
    assert [r["image"] for r in bad] == [truncated] and "predictions" not in bad[0]
    assert truncated in bad[0]["error"] and "truncated" in bad[0]["error"]
    good = [r for r in records if "error" not in r]
    assert_same_predictions(good, one_at_a_time_predictions(files / "cls", photo_paths(files, "damaged"), k=5))
    # CSV: the error column
    code, _, err = run(argv + ["--output", tmp_path / "preds.csv"], capsys)
    assert code == 0 and "skipped 1 unreadable image" in err
    rows = read_csv(tmp_path / "preds.csv", 5)
    assert [r["image"] for r in rows if "error" in r] == [truncated]
    # without --output: the JSON list holds the record with the error
    code, out, err = run(argv + ["--json"], capsys)
    assert code == 0 and "skipped 1 unreadable image" in err
    assert [r["image"] for r in json.loads(out) if "error" in r] == [truncated]
    # --strict: one line naming the file
    code, _, err = run(argv + ["--output", tmp_path / "strict.jsonl", "--strict"], capsys)
    assert_one_line_error(code, err, truncated)


def test_user_errors_are_one_line(files, capsys, tmp_path):
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file.png").write_bytes(b"")
    cls, seg = ["--model", files / "cls"], ["--model", files / "seg"]
    cases = [
        (["predict", files / "photos", files / "nowhere", *cls], ["no image file or folder", "nowhere"]),
        (["predict", files / "empty", *cls], ["no image files", "empty"]),
        (["predict", files / "photos", *cls, "--output", tmp_path / "a_folder"], ["a_folder", "is a folder"]),
        (["predict", files / "photos", *cls, "--output", tmp_path / "preds.txt"], ["preds.txt", "--format"]),
        (["predict", files / "photos", *cls, "--output", tmp_path / "p.jsonl", "--json"], ["--json"]),
        (["predict", files / "photos", *cls, "--batch-size", "0"], ["--batch-size"]),
        (["predict", files / "photos", *seg], ["MobileViTV2ForSemanticSegmentation", "predict"]),
        (["segment", files / "photos", *cls, "--out", tmp_path / "masks"], ["MobileViTV2ForImageClassification"]),
        (["segment", files / "nowhere", *seg, "--out", tmp_path / "masks"], ["nowhere"]),
        (["segment", files / "empty", *seg, "--out", tmp_path / "masks"], ["no image files", "empty"]),
        (["segment", files / "photos", *seg, "--out", tmp_path / "a_file.png"], ["a_file.png", "is a file"]),
        (["segment", files / "photos", *seg, "--out", tmp_path / "m", "--overlay", tmp_path / "o.png"], ["--overlay-dir"]),
        (["segment", files / "photos" / "a.jpg", *seg, "--out", tmp_path / "m.png", "--overlay-dir", tmp_path / "o"], ["--overlay-dir"]),
        (["segment", files / "photos" / "a.jpg", files / "damaged" / "a.jpg", *seg, "--out", tmp_path / "m"], ["a.jpg", "both"]),
    ]
    for argv, fragments in cases:
        code, _, err = run(argv, capsys)
        assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "masks").exists() and not (tmp_path / "m").exists()


# ----- segment ---------------------------------------------------------------------------------------------------
def test_segment_folder_equals_one_image_at_a_time(files, capsys, tmp_path):
    processor = MobileViTV2ImageProcessor.from_pretrained(files / "seg", do_center_crop=False)
    shapes = [processor(Image.open(p), return_tensors="pt")["pixel_values"].shape for p in photo_paths(files)]
    assert 1 < len(set(shapes)) < len(shapes)  # batches mix shapes, and some shapes share a forward pass
    code, out, err = run(
        ["segment", files / "damaged", "--model", files / "seg", "--out", tmp_path / "masks", "--overlay-dir", tmp_path / "overlays",
         "--batch-size", "4", "--workers", "0"], capsys,
    )  # fmt: skip
    assert code == 0 and err.strip() == "mobilevitv2 segment: skipped 1 unreadable image (--strict to stop at the first)"
    assert out.strip() == f"wrote {len(PHOTOS)} masks to {tmp_path / 'masks'} and overlays to {tmp_path / 'overlays'}"
    written = sorted(os.path.relpath(os.path.join(d, f), tmp_path / "masks") for d, _, fs in os.walk(tmp_path / "masks") for f in fs)
    assert written == sorted(os.path.splitext(name)[0] + ".png" for name, *_ in PHOTOS)
    classes = set()
    for name, height, width, _ in PHOTOS:
        stem = os.path.splitext(name)[0] + ".png"
        code, _, _ = run(
            ["segment", files / "damaged" / name, "--model", files / "seg", "--out", tmp_path / "single" / stem,
             "--overlay", tmp_path / "single_overlay" / stem], capsys,
        )  # fmt: skip
        assert code == 0
        mask, single = Image.open(tmp_path / "masks" / stem), Image.open(tmp_path / "single" / stem)
        assert mask.mode == "P" and mask.size == (width, height)
        assert mask.getpalette() == single.getpalette()
        assert np.array_equal(np.asarray(mask), np.asarray(single)), name
        classes.update(np.unique(np.asarray(mask)).tolist())
        assert np.array_equal(np.asarray(Image.open(tmp_path / "overlays" / stem)), np.asarray(Image.open(tmp_path / "single_overlay" / stem)))
    assert len(classes) > 1  # masks that are not all one class
    code, _, err = run(["segment", files / "damaged", "--model", files / "seg", "--out", tmp_path / "strict", "--strict", "--workers", "0"], capsys)
    assert_one_line_error(code, err, str(files / "damaged" / "sub" / "truncated.jpg"))


def test_segment_files_api_masks_at_image_size(files):
    model = MobileViTV2ForSemanticSegmentation.from_pretrained(files / "seg")
    processor = MobileViTV2ImageProcessor.from_pretrained(files / "seg", do_center_crop=False)
    paths = photo_paths(files)
    records = list(inference.segment_files(model, processor, paths, batch_size=8, keep_images=True))
    assert [r["image"] for r in records] == paths
    for record in records:
        image = Image.open(record["image"])
        with torch.no_grad():
            outputs = model(processor(image, return_tensors="pt")["pixel_values"])
        expected = processor.post_process_semantic_segmentation(outputs, target_sizes=[(image.height, image.width)])[0]
        assert np.array_equal(record["mask"], expected.numpy())
        assert record["pixels"].size == image.size


# ----- torchrun --------------------------------------------------------------------------------------------------
def test_torchrun_two_processes_merge_one_output_in_input_order(files, capsys, tmp_path):
    argv = ["predict", files / "damaged", "--model", files / "cls", "--top-k", "2", "--batch-size", "2", "--workers", "0"]
    code, _, _ = run(argv + ["--output", tmp_path / "one.csv"], capsys)
    assert code == 0
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "mobilevitv2"]
    done = subprocess.run(
        launch + [str(a) for a in argv] + ["--output", str(tmp_path / "two.csv")],
        capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == [f"wrote {tmp_path / 'two.csv'} ({len(PHOTOS) + 1} images, top 2)"]  # rank 0 alone
    assert done.stderr.count("skipped 1 unreadable image") == 1
    assert sorted(os.listdir(tmp_path)) == ["one.csv", "two.csv"]  # the part files merged and removed
    one, two = read_csv(tmp_path / "one.csv", 2), read_csv(tmp_path / "two.csv", 2)
    assert [r["image"] for r in two] == [r["image"] for r in one]
    for a, b in zip(one, two):
        assert a.get("error") == b.get("error")
        if "predictions" in a:
            assert [p["index"] for p in a["predictions"]] == [p["index"] for p in b["predictions"]]
            assert np.allclose([p["probability"] for p in a["predictions"]], [p["probability"] for p in b["predictions"]], atol=1e-5)


def test_merge_parts_interleaves_ranks(tmp_path):
    records = [{"image": f"{i}.jpg", "predictions": [{"index": i, "label": str(i), "probability": 0.5}]} for i in range(5)]
    for fmt in inference.FORMATS:
        output = str(tmp_path / f"out.{fmt}")
        parts = [inference.part_path(output, rank, 2) for rank in range(2)]
        for rank, part in enumerate(parts):
            with inference.PredictionWriter(part, fmt, 1) as writer:
                for record in records[rank::2]:
                    writer.write(record)
        inference.merge_parts(parts, output, fmt, len(records), 1)
        merged = read_jsonl(output) if fmt == "jsonl" else read_csv(output, 1)
        assert [r["image"] for r in merged] == [r["image"] for r in records]
        assert not any(os.path.exists(p) for p in parts)
