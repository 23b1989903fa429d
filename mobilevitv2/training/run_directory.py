"""The output folder of a training run: what it holds, when it may be reused, and the training state that
``--resume`` continues from. Every file is written to a temporary name and renamed, so a run killed while
writing leaves the previous version intact.

``OUT/`` holds the checkpoint (``config.json``, ``model.safetensors``, ``preprocessor_config.json``),
``metrics.jsonl``, ``metrics.png``, ``train_args.json`` (what the run is) and ``training_state/`` (model,
optimizer, scheduler, scaler, weight average, epoch, metrics so far, and one random-state file per process).
"""

from __future__ import annotations

import json
import os
import shutil

import torch

ARGS_FILE = "train_args.json"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "metrics.png"
STATE_DIR = "training_state"
STATE_FILE = "state.pt"
RUN_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "preprocessor_config.json", METRICS_FILE, PLOT_FILE, ARGS_FILE)


class RunDirectoryError(ValueError):
    """An output folder that cannot take this run; the message says why and what to pass."""


def state_path(out: str) -> str:
    return os.path.join(out, STATE_DIR, STATE_FILE)


def rng_path(out: str, rank: int) -> str:
    return os.path.join(out, STATE_DIR, f"rng-{rank}.pt")


def prepare(out: str, settings: dict, differences, resume: bool, overwrite: bool) -> None:
    """Make ``out`` ready (called on the main process only). ``differences(saved_settings)`` lists the
    settings that differ from a saved run's."""
    has_state = os.path.isfile(state_path(out))
    if resume:
        if not has_state:
            raise RunDirectoryError(f"{out}: nothing to resume (no {STATE_DIR}/{STATE_FILE}); run without --resume")
        saved = read_json(os.path.join(out, ARGS_FILE))
        changed = differences(saved)
        if changed:
            raise RunDirectoryError(f"{out}: --resume with other settings than the saved run: " + "; ".join(changed))
        return
    if os.path.isfile(out):
        raise RunDirectoryError(f"{out}: a file, not a folder")
    occupied = os.path.isdir(out) and any(not name.startswith(".") for name in os.listdir(out))
    if occupied and not overwrite:
        what = "a training run" if has_state or os.path.isfile(os.path.join(out, ARGS_FILE)) else "other files"
        raise RunDirectoryError(f"{out}: holds {what}; pass --resume to continue it or --overwrite to replace it")
    if occupied:
        for name in RUN_FILES:
            path = os.path.join(out, name)
            if os.path.isfile(path):
                os.remove(path)
        shutil.rmtree(os.path.join(out, STATE_DIR), ignore_errors=True)
    os.makedirs(os.path.join(out, STATE_DIR), exist_ok=True)
    write_json(os.path.join(out, ARGS_FILE), settings)


def read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise RunDirectoryError(f"{path}: cannot read the saved run settings ({exc})") from None


def write_json(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def save_torch(obj, path: str) -> None:
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_metrics(out: str, records: list[dict]) -> None:
    """metrics.jsonl: one JSON object per finished epoch (rewritten whole, so a resumed run never repeats
    or loses an epoch)."""
    path = os.path.join(out, METRICS_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    os.replace(tmp, path)


def random_states() -> dict:
    import random

    import numpy as np

    states = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_random_states(states: dict) -> None:
    import random

    import numpy as np

    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
