"""keep_freed_memory: after it, a large tensor freed and allocated again reuses the process's memory instead of
page-faulting fresh pages in (counted with getrusage, in a child process so the suite's own malloc is left
as it is); the opt-out; and the commands that run a model on the CPU calling it."""

import os
import platform
import subprocess
import sys

import pytest

from cli_utils import run
from mobilevitv2 import cpu_memory

CHILD = """
import resource, sys, torch
from mobilevitv2 import cpu_memory
print(cpu_memory.keep_freed_memory() if sys.argv[1] == "keep" else None)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
# 64 MiB, ten times first, so that the heap has settled. On a loaded machine the blocks came at two or
# three alternating addresses, each faulted in on its first use only (logged with data_ptr); 3 rounds
# first left a later round faulting a fresh block in (11 of 24 children), 10 rounds first none of 24.
for _ in range(10):
    torch.ones(64 << 18)
before = faults()
for _ in range(10):
    torch.ones(64 << 18)  # allocated, written (every page touched) and freed
print(faults() - before)
"""


def page_faults(mode: str, opt_out: bool = False) -> tuple[str, int]:
    env = {**os.environ, cpu_memory.ENV: "0" if opt_out else "1"}  # the suite's conftest opts its own process out
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=120, env=env, check=True)
    took, faults = out.stdout.split()
    return took, int(faults)


@pytest.mark.skipif(platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc", reason="glibc only")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    # Stock: each of the ten 64 MiB blocks is mapped anew and faulted in (16,384 faults of 4 KiB pages each
    # here; about 32 per block where transparent huge pages are always on). Kept: once the heap has grown,
    # measured none.
    took, stock = page_faults("stock")
    assert stock >= 10 * 16, f"the stock allocator faulted only {stock} times for ten fresh 64 MiB blocks"
    took, kept = page_faults("keep")
    assert took == "True" and kept <= stock // 10, f"{kept} page faults with freed memory kept, {stock} without"


def test_the_opt_out_leaves_malloc_alone():
    took, faults = page_faults("keep", opt_out=True)
    assert took == "False"
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert faults >= 10 * 16, f"opted out, yet only {faults} page faults for ten fresh 64 MiB blocks"


def test_keep_bytes_must_be_a_non_negative_int():
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="keep_bytes must be a non-negative int"):
            cpu_memory.keep_freed_memory(bad)


def test_predict_on_the_cpu_keeps_freed_memory(tmp_path, capsys, monkeypatch):
    from image_utils import synthetic_photo
    from model_utils import randomize_
    from mobilevitv2 import MobileViTV2Config, MobileViTV2ForImageClassification, MobileViTV2ImageProcessor

    model = randomize_(MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=0.5, num_labels=3)), 0).eval()
    model.save_pretrained(tmp_path / "m")
    MobileViTV2ImageProcessor(size=64, crop_size=64).save_pretrained(tmp_path / "m")
    synthetic_photo(64, 64, seed=0).save(tmp_path / "a.png")
    calls = []
    monkeypatch.setattr(cpu_memory, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    code, _, err = run(["predict", tmp_path / "a.png", "--model", tmp_path / "m", "--workers", "0"], capsys)
    assert code == 0, err
    assert calls == [1]


@pytest.mark.parametrize("device, cuda, kept", [("cpu", True, True), (None, False, True), (None, True, False)])
def test_train_keeps_freed_memory_when_it_runs_on_the_cpu(tmp_path, capsys, monkeypatch, device, cuda, kept):
    """--device cpu, or no GPU: kept; the GPU: the allocator left alone (training itself stubbed)."""
    pytest.importorskip("torchvision")
    import mobilevitv2.training

    calls, trained = [], []
    monkeypatch.setattr(cpu_memory, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr("torch.cuda.is_available", lambda: cuda)
    monkeypatch.setattr(mobilevitv2.training, "train", lambda args: trained.append(args.device))
    argv = ["train", tmp_path, "--out", tmp_path / "out", "--width", "0.5"] + (["--device", device] if device else [])
    code, _, err = run(argv, capsys)
    assert code == 0, err
    assert trained == [device] and calls == ([1] if kept else [])
