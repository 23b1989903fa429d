"""Log-log plot of time against N, separable vs multi-head attention, from a results JSON of run_full.py.

    python bench/plot_attention_scaling.py bench/results/full-cuda.json out.png
"""

from __future__ import annotations

import json
import re
import sys


def plot(json_path: str, png_path: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed; skipping the plot (pip install matplotlib)", file=sys.stderr)
        return None
    with open(json_path) as f:
        data = json.load(f)
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for row in data["results"]:
        m = re.match(r"attention N=(\d+) .* (fwd\+bwd|fwd)$", row["group"])
        if m and row["error"] is None:
            series.setdefault((row["provider"], m.group(2)), []).append((int(m.group(1)), row["ms"]))
    if not series:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=False)
    for ax, mode in zip(axes, ("fwd", "fwd+bwd")):
        for (provider, m), points in sorted(series.items()):
            if m == mode:
                points.sort()
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=provider)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens per sequence N (fixed total tokens)")
        ax.set_ylabel("ms")
        ax.set_title(f"{mode}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    env = data["environment"]
    fig.suptitle(f"Separable vs multi-head attention on {env['device']} (torch {env['torch']}, {env['commit']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    return png_path


if __name__ == "__main__":
    print(plot(sys.argv[1], sys.argv[2]))
