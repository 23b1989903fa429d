"""Log-log plot of time against N, separable vs multi-head attention, from a results JSON of run_full.py (or
any file the benchmark harness's ``write_results`` wrote, read back with its ``read_results``).

    python bench/plot_attention_scaling.py bench/results/full-cuda.json out.png
"""

from __future__ import annotations

import re
import sys

from mobilevitv2.bench.harness import read_results


def plot(json_path: str, png_path: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed; skipping the plot (pip install matplotlib)", file=sys.stderr)
        return None
    env, results = read_results(json_path)
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for r in results:
        m = re.match(r"attention N=(\d+) .* (fwd\+bwd|fwd)$", r.group)
        if m and r.error is None:
            series.setdefault((r.provider, m.group(2)), []).append((int(m.group(1)), r.ms))
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
    fig.suptitle(f"Separable vs multi-head attention on {env['device']} (torch {env['torch']}, {env['commit']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    return png_path


if __name__ == "__main__":
    print(plot(sys.argv[1], sys.argv[2]))
