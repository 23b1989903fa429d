"""The caches' size limit (mobilevitv2.cache_limit): entries used longest ago go first; the new entry, the
recently used ones and anything this package did not write stay; compiled graphs and exports are pruned
and marked used; ``mobilevitv2 cache`` shows and clears the folders."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
from torch import nn

from mobilevitv2 import cache_limit, runtimes
from mobilevitv2.compiled_graphs import CachedGraph

HOUR = 3600


def _package(folder, graph, size, age, now, digest_char="a"):
    """A file named as CachedGraph names its packages."""
    path = folder / f"{graph}-1x3x64x64-{digest_char * 32}.pt2"
    path.write_bytes(b"\0" * size)
    os.utime(path, (now - age, now - age))
    return path


def _export_entry(folder, size, age, now, digest_char="a"):
    """A folder as cached_export writes it: its name ends in the key's first 24 digits, key.json holds it."""
    key = digest_char * 64
    entry = folder / f"MobileViTV2ForImageClassification-64x64-fp32-{key[:24]}"
    entry.mkdir()
    (entry / "model.onnx").write_bytes(b"\0" * size)
    (entry / "key.json").write_text(json.dumps({"sha256": key, "format": "onnx"}))
    os.utime(entry, (now - age, now - age))
    return entry


def test_oldest_entries_go_first_and_the_new_one_stays(tmp_path):
    now = time.time()
    old = _package(tmp_path, "early", 400, age=3 * HOUR, now=now, digest_char="1")
    middle = _package(tmp_path, "late", 400, age=2 * HOUR, now=now, digest_char="2")
    recent = _package(tmp_path, "late", 400, age=1 * HOUR, now=now, digest_char="3")
    new = _package(tmp_path, "early", 900, age=4 * HOUR, now=now, digest_char="4")  # just written: kept anyway
    removed = cache_limit.prune(tmp_path, keep=new, limit=1400, now=now)
    assert removed == [old, middle]
    assert {p.name for p in tmp_path.iterdir()} == {recent.name, new.name}


def test_recently_used_entries_stay_even_over_the_limit(tmp_path):
    """Another process may have just written one, or found one and be about to open it."""
    now = time.time()
    old = _package(tmp_path, "early", 1000, age=HOUR, now=now, digest_char="1")
    recent = _package(tmp_path, "late", 1000, age=cache_limit.RECENTLY_USED_SECONDS - 60, now=now, digest_char="2")
    new = _package(tmp_path, "early", 1000, age=0, now=now, digest_char="3")
    assert cache_limit.prune(tmp_path, keep=new, limit=1000, now=now) == [old]
    assert recent.exists() and new.exists()


def test_an_entry_used_while_pruning_is_passed_over(tmp_path, monkeypatch):
    now = time.time()
    used = _package(tmp_path, "early", 1000, age=HOUR, now=now, digest_char="1")
    other = _package(tmp_path, "late", 1000, age=HOUR - 10, now=now, digest_char="2")
    new = _package(tmp_path, "early", 1000, age=0, now=now, digest_char="3")
    real_entries = cache_limit.entries

    def entries_then_used(folder):
        found = real_entries(folder)
        cache_limit.mark_used(used)  # another process loads it between the scan and the removal
        return found

    monkeypatch.setattr(cache_limit, "entries", entries_then_used)
    assert cache_limit.prune(tmp_path, keep=new, limit=1000, now=now) == [other]
    assert used.exists()


def test_only_this_packages_own_entries_count(tmp_path):
    now = time.time()
    mine = _package(tmp_path, "early", 100, age=HOUR, now=now)
    entry = _export_entry(tmp_path, 100, age=HOUR, now=now)
    foreign = {
        "program.pt2": b"\0" * 5000,  # someone's torch.export program
        "notes.txt": b"\0" * 5000,
        f".partial-x-{'b' * 32}.pt2": b"\0" * 5000,  # a compile in progress
    }
    for name, data in foreign.items():
        (tmp_path / name).write_bytes(data)
        os.utime(tmp_path / name, (now - 9 * HOUR, now - 9 * HOUR))
    project = tmp_path / f"MobileViTV2ForImageClassification-64x64-fp32-{'c' * 24}"  # a look-alike name
    project.mkdir()
    (project / "key.json").write_text(json.dumps({"sha256": "d" * 64}))  # whose key is not its name's
    lookalike = tmp_path / "a-project"
    lookalike.mkdir()
    (lookalike / "key.json").write_text(json.dumps({"sha256": "a" * 64}))
    assert sorted(p.name for _, _, p in cache_limit.entries(tmp_path)) == sorted([mine.name, entry.name])
    new = _package(tmp_path, "late", 100, age=0, now=now, digest_char="f")
    assert sorted(cache_limit.prune(tmp_path, keep=new, limit=0, now=now)) == sorted([mine, entry])
    assert {p.name for p in tmp_path.iterdir()} == {new.name, project.name, lookalike.name, *foreign}
    assert cache_limit.prune(tmp_path / "missing", keep=new) == []


def test_marking_an_entry_used_keeps_it_over_newer_ones(tmp_path):
    now = time.time()
    used = _package(tmp_path, "early", 100, age=9 * HOUR, now=now, digest_char="1")
    other = _package(tmp_path, "early", 100, age=2 * HOUR, now=now, digest_char="2")
    new = _package(tmp_path, "early", 100, age=0, now=now, digest_char="3")
    cache_limit.mark_used(used)
    assert cache_limit.prune(tmp_path, keep=new, limit=250, now=now + 2 * cache_limit.RECENTLY_USED_SECONDS) == [other]
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
    stale = [_package(tmp_path, "old", 10**6, age=HOUR + i, now=now, digest_char=str(i)) for i in range(3)]
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


def test_a_package_larger_than_the_limit_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv(cache_limit.LIMIT_ENV, "0.000000001")  # 1 byte
    module = nn.Sequential(nn.Conv2d(3, 2, 1)).eval()
    x = torch.rand(1, 3, 4, 4)
    graph = CachedGraph(module, "tiny", {"test": 2}, tmp_path, torch.compile)
    with torch.no_grad():
        graph(x)
    assert graph.package_path(x).is_file() and graph.compiled == 1


def test_an_export_prunes_its_format_folder_and_marks_a_reused_entry(tmp_path, monkeypatch):
    model = _tiny_classifier()
    now = time.time()
    root = tmp_path / "onnx"
    root.mkdir()
    old = _export_entry(root, 2000, age=HOUR, now=now)
    monkeypatch.setenv(cache_limit.LIMIT_ENV, "0.000001")  # 1000 bytes: only the new entry stays
    monkeypatch.setattr(runtimes, "export", _fake_export)
    path, cached = runtimes.cached_export(model, "onnx", 64, 64, cache_dir=tmp_path)
    assert not cached and os.path.isfile(path)
    assert not old.exists()
    entry = os.path.dirname(path)
    assert [p for _, _, p in cache_limit.entries(root)] == [cache_limit.Path(entry)]  # named as prune expects
    os.utime(entry, (now - 5000, now - 5000))
    path_again, cached = runtimes.cached_export(model, "onnx", 64, 64, cache_dir=tmp_path)
    assert cached and path_again == path and os.stat(entry).st_mtime > now - 60


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
    graphs = tmp_path / "inductor-cpu"
    graphs.mkdir()
    _export_entry(tmp_path / "onnx", 2_000_000, age=10, now=now)
    _package(graphs, "early", 3_000_000, age=10, now=now, digest_char="1")
    _package(graphs, "late", 1_000_000, age=10, now=now, digest_char="2")
    _package(graphs, "late", 0, age=10, now=now, digest_char="3")  # empty: still an entry to clear
    foreign = graphs / "readme.txt"
    foreign.write_text("mine")
    assert cli.main(["cache"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{tmp_path} (each folder kept under 1.5 GB, $MOBILEVITV2_CACHE_LIMIT_GB)"
    assert out[1].split() == ["onnx", "1", "entries", "2.0", "MB"]
    assert out[-1].split() == ["inductor-cpu", "3", "entries", "4.0", "MB"]
    assert [line.split()[0] for line in out[1:]] == ["onnx", "openvino", "executorch", "inductor-cpu"]

    monkeypatch.setenv(cache_limit.LIMIT_ENV, "lots")  # a bad limit: reported, and clearing still works
    assert cli.main(["cache", "--clear"]) == 0
    captured = capsys.readouterr()
    assert "MOBILEVITV2_CACHE_LIMIT_GB must be a positive number" in captured.err
    out = captured.out.splitlines()
    assert out[1].split() == ["onnx", "removed", "1", "entries", "(2.0", "MB)"]
    assert out[-1].split() == ["inductor-cpu", "removed", "3", "entries", "(4.0", "MB)"]
    assert list((tmp_path / "onnx").iterdir()) == [] and list(graphs.iterdir()) == [foreign]
