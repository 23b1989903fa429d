"""The caches' size limit (mobilevitv2.cache_limit): entries used longest ago go first, the new entry and
anything this package did not write stay; compiled graphs and exports are pruned and marked used."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
from torch import nn

from mobilevitv2 import cache_limit, runtimes
from mobilevitv2.compiled_graphs import CachedGraph


def _package(folder, name, size, age, now):
    path = folder / name
    path.write_bytes(b"\0" * size)
    os.utime(path, (now - age, now - age))
    return path


def _export_entry(folder, name, size, age, now):
    entry = folder / name
    entry.mkdir()
    (entry / "model.onnx").write_bytes(b"\0" * size)
    (entry / "key.json").write_text("{}")
    os.utime(entry, (now - age, now - age))
    return entry


def test_oldest_entries_go_first_and_the_new_one_stays(tmp_path):
    now = time.time()
    old = _package(tmp_path, "early-a.pt2", 400, age=300, now=now)
    middle = _package(tmp_path, "late-b.pt2", 400, age=200, now=now)
    recent = _package(tmp_path, "late-c.pt2", 400, age=100, now=now)
    new = _package(tmp_path, "early-d.pt2", 900, age=400, now=now)  # just written, oldest time: still kept
    partial = _package(tmp_path, ".partial-x.pt2", 5000, age=500, now=now)
    foreign = _package(tmp_path, "notes.txt", 5000, age=500, now=now)
    removed = cache_limit.prune(tmp_path, keep=new, limit=1400)
    assert removed == [old, middle]
    assert {p.name for p in tmp_path.iterdir()} == {recent.name, new.name, partial.name, foreign.name}


def test_export_folders_count_whole_and_only_with_their_key(tmp_path):
    now = time.time()
    old = _export_entry(tmp_path, "Model-64x64-fp32-aaa", 700, age=200, now=now)
    new = _export_entry(tmp_path, "Model-64x64-fp32-bbb", 700, age=0, now=now)
    unknown = tmp_path / "someone-elses-folder"
    unknown.mkdir()
    (unknown / "data.bin").write_bytes(b"\0" * 5000)
    os.utime(unknown, (now - 900, now - 900))
    assert cache_limit.prune(tmp_path, keep=new, limit=1000) == [old]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([new.name, unknown.name])
    assert cache_limit.prune(tmp_path, keep=new, limit=10) == []  # only the kept entry is left
    assert cache_limit.prune(tmp_path / "missing", keep=new) == []


def test_marking_an_entry_used_keeps_it_over_newer_ones(tmp_path):
    now = time.time()
    used = _package(tmp_path, "a.pt2", 100, age=900, now=now)
    other = _package(tmp_path, "b.pt2", 100, age=10, now=now)
    new = _package(tmp_path, "c.pt2", 100, age=0, now=now)
    cache_limit.mark_used(used)
    assert cache_limit.prune(tmp_path, keep=new, limit=250) == [other]
    cache_limit.mark_used(tmp_path / "gone.pt2")  # nothing to mark: no error


@pytest.mark.parametrize("value, expected", [("", 2e9), ("0.5", 5e8), ("inf", float("inf")), (" 3 ", 3e9)])
def test_the_limit_comes_from_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv(cache_limit.LIMIT_ENV, value)
    assert cache_limit.limit_bytes() == expected


@pytest.mark.parametrize("value", ["0", "-1", "two", "nan"])
def test_a_bad_limit_is_refused_by_name(monkeypatch, value):
    monkeypatch.setenv(cache_limit.LIMIT_ENV, value)
    with pytest.raises(ValueError, match=r"MOBILEVITV2_CACHE_LIMIT_GB must be a positive number"):
        cache_limit.limit_bytes()
    with pytest.raises(ValueError, match="MOBILEVITV2_CACHE_LIMIT_GB"):  # before any compile
        CachedGraph(nn.Identity(), "g", {}, "unused", torch.compile)


def test_a_compiled_graph_prunes_its_folder_and_marks_what_it_loads(tmp_path, monkeypatch):
    now = time.time()
    stale = [_package(tmp_path, f"old-{i}.pt2", 10**6, age=1000 + i, now=now) for i in range(3)]
    monkeypatch.setenv(cache_limit.LIMIT_ENV, "0.0015")  # 1.5 MB: one old package and the new one fit, if small
    module = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()).eval()
    x = torch.rand(1, 3, 8, 8)
    graph = CachedGraph(module, "tiny", {"test": 1}, tmp_path, torch.compile)
    with torch.no_grad():
        expected, got = module(x), graph(x)
    torch.testing.assert_close(got, expected)
    assert graph.compiled == 1 and graph.fell_back == 0
    package = graph.package_path(x)
    size = package.stat().st_size
    left = {p.name for p in tmp_path.iterdir() if p.suffix == ".pt2"}
    assert package.name in left
    # the oldest went first; what stayed fits the limit together with the new package
    assert stale[2].name not in left and stale[1].name not in left
    assert (stale[0].name in left) == (size + 10**6 <= 1.5e6)

    os.utime(package, (now - 5000, now - 5000))
    again = CachedGraph(module, "tiny", {"test": 1}, tmp_path, torch.compile)
    with torch.no_grad():
        again(x)
    assert again.loaded == 1 and package.stat().st_mtime > now - 60  # marked used when loaded


def test_an_export_prunes_its_format_folder_and_marks_a_reused_entry(tmp_path, monkeypatch):
    model = _tiny_classifier()
    now = time.time()
    root = tmp_path / "onnx"
    root.mkdir()
    old = _export_entry(root, "Old-64x64-fp32-aaa", 2000, age=1000, now=now)
    monkeypatch.setenv(cache_limit.LIMIT_ENV, "0.000001")  # 1000 bytes: only the new entry stays
    monkeypatch.setattr(runtimes, "export", _fake_export)
    path, cached = runtimes.cached_export(model, "onnx", 64, 64, cache_dir=tmp_path)
    assert not cached and os.path.isfile(path)
    assert not old.exists()
    entry = os.path.dirname(path)
    os.utime(entry, (now - 5000, now - 5000))
    path_again, cached = runtimes.cached_export(model, "onnx", 64, 64, cache_dir=tmp_path)
    assert cached and path_again == path and os.stat(entry).st_mtime > now - 60
    with open(os.path.join(entry, "key.json"), encoding="utf-8") as f:
        assert json.load(f)["format"] == "onnx"


def _fake_export(model, path, format, height, width, compression=None):
    with open(path, "wb") as f:
        f.write(b"\0" * 100)


def _tiny_classifier():
    from mobilevitv2 import MobileViTV2Config, MobileViTV2ForImageClassification

    return MobileViTV2ForImageClassification(MobileViTV2Config.from_width(0.5, num_labels=3)).eval()


def test_the_cache_command_shows_and_clears_only_its_own_entries(tmp_path, monkeypatch, capsys):
    from mobilevitv2 import cli

    monkeypatch.setenv(runtimes.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv(cache_limit.LIMIT_ENV, "1.5")
    now = time.time()
    (tmp_path / "onnx").mkdir()
    (tmp_path / "inductor-cpu").mkdir()
    _export_entry(tmp_path / "onnx", "Model-64x64-fp32-aaa", 2_000_000, age=10, now=now)
    _package(tmp_path / "inductor-cpu", "early-1x3x64x64-abc.pt2", 3_000_000, age=10, now=now)
    _package(tmp_path / "inductor-cpu", "late-1x64x8x8-def.pt2", 1_000_000, age=10, now=now)
    foreign = _package(tmp_path / "inductor-cpu", "readme.txt", 10, age=10, now=now)
    assert cli.main(["cache"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{tmp_path} (each folder kept under 1.5 GB, $MOBILEVITV2_CACHE_LIMIT_GB)"
    assert out[1].split() == ["onnx", "1", "entries", "2.0", "MB"]
    assert out[-1].split() == ["inductor-cpu", "2", "entries", "4.0", "MB"]
    assert [line.split()[0] for line in out[1:]] == ["onnx", "openvino", "executorch", "inductor-cpu"]

    assert cli.main(["cache", "--clear"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["onnx", "removed", "1", "entries", "(2.0", "MB)"]
    assert out[-1].split() == ["inductor-cpu", "removed", "2", "entries", "(4.0", "MB)"]
    assert list((tmp_path / "onnx").iterdir()) == [] and list((tmp_path / "inductor-cpu").iterdir()) == [foreign]

    monkeypatch.setenv(cache_limit.LIMIT_ENV, "lots")
    assert cli.main(["cache"]) == 1
    assert "MOBILEVITV2_CACHE_LIMIT_GB must be a positive number" in capsys.readouterr().err
