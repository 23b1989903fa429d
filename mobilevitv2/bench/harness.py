"""Cases, timing, the environment and the results files, shared by every benchmark in the repository.

Providers are data: each :class:`Case` names a group (what is being compared), a provider (who runs it) and a
zero-argument callable to time. Every case of a group runs in the same process on the same device, and the
table reports each provider's speed as a ratio against the group's baseline. Timings are medians: of CUDA
events after warm-up (:func:`time_ms`), or of ``triton.testing.do_bench``, which flushes the L2 cache before
each run (:func:`do_bench_ms`), on a GPU; of ``time.perf_counter`` on the CPU.

Every results file carries :func:`environment` (device, versions, commit) and is replaced atomically
(:func:`write_atomically`), so that a run stopped at any moment leaves complete files holding every result
so far: :func:`write_results` for case results (.json, .csv, .txt), :class:`JsonRecord` for a file of
sections of free-form rows rewritten at every change.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch


@dataclass
class Case:
    group: str  # what is compared, e.g. "model w1.0 b256 fp16 inference"
    provider: str  # who runs it, e.g. "ours fused", "transformers compiled"
    fn: Callable[[], object] = field(repr=False)
    baseline: bool = False  # the group's reference point for the speed-up column
    items: int = 0  # images (or tokens) per call, for a throughput column (0: none)
    bytes_moved: int = 0  # for bandwidth: bytes read + written by one call


@dataclass
class Result:
    group: str
    provider: str
    ms: float
    speedup: float | None = None
    items_per_s: float | None = None
    fraction_of_copy: float | None = None
    peak_mib: float | None = None  # CUDA: the most memory allocated during the timed calls
    error: str | None = None


# ----- environment -------------------------------------------------------------------------------------------


# /proc/cpuinfo flags that decide how fast a CPU runs the model, named in CPU results
_CPU_FEATURES = {"avx512f": "AVX-512", "avx512_bf16": "AVX-512 BF16", "amx_bf16": "AMX"}


def cpu_description(cpuinfo: str | None = None) -> str:
    """The CPU's model name (from ``/proc/cpuinfo`` where there is one), architecture, core count and the
    vector features that decide its fp32 and bf16 speed: two CPUs of the same architecture can differ
    several times in bf16 (AMX or not), so a CPU result names them."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    fields = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    parts = [fields.get("model name") or platform.processor() or platform.machine(), platform.machine(), f"{os.cpu_count()} cores"]
    parts += [name for flag, name in _CPU_FEATURES.items() if flag in flags]
    return f"CPU ({', '.join(dict.fromkeys(p for p in parts if p))})"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_description()


def environment(device: torch.device) -> dict:
    """Device name and versions that every results file carries (its ``environment`` block)."""
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": git_commit(),
    }
    for name in ("triton", "transformers"):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            env[name] = None
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["sm_count"] = torch.cuda.get_device_properties(device).multi_processor_count
    return env


def git_commit() -> str | None:
    """$GIT_COMMIT where the code runs from a copy without .git (a GPU machine), else the checkout's short
    commit with "+dirty" when tracked files differ from it, else None."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


# ----- timing ------------------------------------------------------------------------------------------------


def mark(device: torch.device):
    """A point in time on ``device``'s clock: a recorded CUDA event on a GPU, ``perf_counter`` on the CPU.
    :func:`elapsed_ms` takes two of them (after :func:`synchronize` on a GPU)."""
    if device.type == "cuda":
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event
    return time.perf_counter()


def elapsed_ms(start, end) -> float:
    if isinstance(start, float):
        return (end - start) * 1e3
    return start.elapsed_time(end)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_up(fn: Callable[[], object], calls: int = 3, max_seconds: float | None = None) -> None:
    """``calls`` calls of ``fn``, or, with ``max_seconds``, fewer once that long has passed since the first
    call returned (the first may build and compile, which is not warm-up); at least two calls."""
    if calls < 1:
        return
    fn()
    began = time.perf_counter()
    for i in range(1, calls):
        if max_seconds is not None and i >= 2 and time.perf_counter() - began > max_seconds:
            break
        fn()


def time_ms(
    fn: Callable[[], object],
    device: torch.device,
    warmup: int = 3,
    reps: int = 10,
    min_seconds: float = 0.0,
    max_seconds: float | None = None,
) -> float:
    """Median milliseconds of ``fn()`` after ``warmup`` calls: CUDA events around each call on a GPU (all
    recorded, then one synchronisation), ``perf_counter`` on the CPU (at least ``min_seconds`` in all; with
    ``max_seconds``, warm-up and timing each stop early once that long has passed, after at least two
    warm-up calls and three timed ones, so a slow CPU case costs seconds, not minutes)."""
    warm_up(fn, warmup, max_seconds if device.type != "cuda" else None)
    times = []
    if device.type == "cuda":
        synchronize(device)
        spans = []
        for _ in range(reps):
            start = mark(device)
            fn()
            spans.append((start, mark(device)))
        synchronize(device)
        times = [elapsed_ms(start, end) for start, end in spans]
    else:
        began = time.perf_counter()
        while len(times) < reps or time.perf_counter() - began < min_seconds:
            if max_seconds is not None and len(times) >= 3 and time.perf_counter() - began > max_seconds:
                break
            start = mark(device)
            fn()
            times.append(elapsed_ms(start, mark(device)))
    return statistics.median(times)


# Pause before each function's turn in a round: ONNX Runtime's idle worker threads spin for 10-20 ms after
# a call, and on 2 cores the next provider's threads share a core with them (measured: our bf16 path
# 23-33 ms right after ONNX Runtime with pauses of 0-10 ms, 18-20 ms after 20-100 ms).
SETTLE_SECONDS = 0.03


def time_interleaved_ms(
    fns: list[Callable[[], object]], reps: int = 10, max_seconds: float | None = None, settle_seconds: float = SETTLE_SECONDS
) -> list[float]:
    """Median ``perf_counter`` milliseconds of each of ``fns`` (warmed up already), timed in rounds, so that a
    CPU whose speed drifts during the run (other tenants, clocks) slows every provider alike instead of
    whichever ran at the wrong moment. In a round each function waits ``settle_seconds`` (the previous
    one's spinning threads go idle), is called twice, and the second call is timed: the first absorbs what
    the previous function left behind (cold caches, threads asleep). Stops after ``reps`` rounds, or, with
    ``max_seconds``, once ``max_seconds`` per function have passed, the pauses not counted (after at least
    three rounds)."""
    times: list[list[float]] = [[] for _ in fns]
    began, paused = time.perf_counter(), 0.0
    while True:
        for fn, spans in zip(fns, times):
            if settle_seconds > 0:
                pause_began = time.perf_counter()
                time.sleep(settle_seconds)
                paused += time.perf_counter() - pause_began
            fn()
            start = time.perf_counter()
            fn()
            spans.append((time.perf_counter() - start) * 1e3)
        rounds = len(times[0])
        working = time.perf_counter() - began - paused
        if rounds >= reps or (max_seconds is not None and rounds >= 3 and working > max_seconds * len(fns)):
            return [statistics.median(spans) for spans in times]


def do_bench_ms(fn: Callable[[], object], rep_ms: float = 100, warmup_ms: float = 25) -> float:
    """``triton.testing.do_bench``'s median in ms (a GPU; the L2 cache flushed before each run), repeating for
    about ``rep_ms`` after ``warmup_ms`` of warm-up."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def once_ms(fn: Callable[[], object]) -> float:
    """One call's wall time in ms (a dry run's timer: the number says only that the call works)."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def copy_ms(device: torch.device, nbytes: int, timer: Callable[[Callable[[], object]], float] | None = None) -> float:
    """Milliseconds of a device-to-device copy moving ``nbytes`` in total (half read, half written), timed by
    ``timer(fn) -> ms`` (default :func:`time_ms`, 20 repetitions)."""
    src = torch.empty(max(1, nbytes // 2), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    timer = timer or (lambda fn: time_ms(fn, device, warmup=3, reps=20))
    return timer(lambda: dst.copy_(src))


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """Bytes per ms of a device-to-device copy of ``nbytes`` (read + written counted), measured now."""
    return 2 * max(1, nbytes // 2) / copy_ms(device, nbytes)


# ----- running cases -----------------------------------------------------------------------------------------


def run_cases(
    cases: Iterable[Case],
    device: torch.device,
    reps: int = 10,
    progress: bool = True,
    after_each: Callable[[list[Result]], None] | None = None,
    max_seconds: float | None = None,
    interleave: bool = False,
) -> list[Result]:
    """Time every case; a case that fails (out of memory, a compile error, a wrong output) is reported, not
    fatal. ``after_each(results so far)`` runs after every case (to write partial results that survive a
    time limit); ``max_seconds``: :func:`time_ms`'s time limit per case. ``interleave`` (CPU only): the
    cases of each group are warmed up one by one, then timed together in rounds
    (:func:`time_interleaved_ms`)."""
    cases = list(cases)
    if interleave and device.type != "cuda":
        return _run_cases_interleaved(cases, device, reps, progress, after_each, max_seconds)
    results, bandwidth_cache = [], {}
    for i, case in enumerate(cases, 1):
        if progress:
            print(f"[{i}/{len(cases)}] {case.group} | {case.provider}", file=sys.stderr, flush=True)
        try:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            ms = time_ms(case.fn, device, reps=reps, max_seconds=max_seconds)
            result = Result(case.group, case.provider, ms, items_per_s=case.items / ms * 1e3 if case.items else None)
            if device.type == "cuda":
                result.peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
            if case.bytes_moved:
                if case.bytes_moved not in bandwidth_cache:
                    bandwidth_cache[case.bytes_moved] = copy_bandwidth(device, case.bytes_moved)
                result.fraction_of_copy = case.bytes_moved / ms / bandwidth_cache[case.bytes_moved]
        except Exception as exc:  # reported in the table and the file
            result = Result(case.group, case.provider, float("nan"), error=_error_text(exc))
            if device.type == "cuda":
                torch.cuda.empty_cache()
        _record(result, cases, results, progress, after_each)
    return results


def _error_text(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _record(result: Result, cases: list[Case], results: list[Result], progress: bool,
            after_each: Callable[[list[Result]], None] | None, label: str = "") -> None:  # fmt: skip
    """Append ``result``, refresh the speed-ups, print it and hand the results so far to ``after_each``."""
    results.append(result)
    fill_speedups(cases, results)
    if progress:
        print(f"    {label}{'error: ' + result.error if result.error else f'{result.ms:.3f} ms'}", file=sys.stderr, flush=True)
    if after_each is not None:
        after_each(results)


def _run_cases_interleaved(
    cases: list[Case],
    device: torch.device,
    reps: int,
    progress: bool,
    after_each: Callable[[list[Result]], None] | None,
    max_seconds: float | None,
) -> list[Result]:
    results: list[Result] = []
    start = 0
    while start < len(cases):
        end = start
        while end < len(cases) and cases[end].group == cases[start].group:
            end += 1
        group = cases[start:end]
        errors: dict[int, str] = {}
        for i, case in enumerate(group):  # build, check and warm up each provider
            if progress:
                print(f"[{start + i + 1}/{len(cases)}] {case.group} | {case.provider}", file=sys.stderr, flush=True)
            started = time.perf_counter()
            try:
                warm_up(case.fn, 3, max_seconds)
            except Exception as exc:
                errors[i] = _error_text(exc)
            if progress and i not in errors:  # where a long run spends its time: a compile or an export shows here
                print(f"    ready in {time.perf_counter() - started:.1f} s (built, checked, warmed up)", file=sys.stderr, flush=True)
        live = [i for i in range(len(group)) if i not in errors]
        if progress and live:
            print(f"    timing {len(live)} providers of {group[0].group} in rounds", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            medians = dict(zip(live, time_interleaved_ms([group[i].fn for i in live], reps, max_seconds))) if live else {}
        except Exception as exc:  # a provider failing after its checked first call: the group's times are lost
            medians = {}
            errors.update({i: "while timing the group: " + _error_text(exc) for i in live})
        if progress and live:
            print(f"    timed in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        for i, case in enumerate(group):
            if i in errors:
                result = Result(case.group, case.provider, float("nan"), error=errors[i])
            else:
                ms = medians[i]
                result = Result(case.group, case.provider, ms, items_per_s=case.items / ms * 1e3 if case.items else None)
                if case.bytes_moved:
                    result.fraction_of_copy = case.bytes_moved / ms / copy_bandwidth(device, case.bytes_moved)
            _record(result, cases, results, progress, after_each, label=f"{case.provider}: ")
        start = end
    return results


def fill_speedups(cases: list[Case], results: list[Result]) -> None:
    """Each result's speed-up against its group's baseline (where the baseline has run without error)."""
    baselines = {c.group: r.ms for c, r in zip(cases, results) if c.baseline and r.error is None}
    for r in results:
        if r.group in baselines and r.error is None:
            r.speedup = baselines[r.group] / r.ms


# ----- results files -----------------------------------------------------------------------------------------


def format_table(results: list[Result]) -> str:
    rows = [("group", "provider", "ms", "speed-up", "items/s", "of copy BW", "peak MiB")]
    for r in results:
        rows.append(
            (
                r.group,
                r.provider,
                "error" if r.error else f"{r.ms:.3f}",
                f"{r.speedup:.2f}x" if r.speedup else (r.error or "")[:40],
                f"{r.items_per_s:,.0f}" if r.items_per_s else "",
                f"{r.fraction_of_copy:.0%}" if r.fraction_of_copy else "",
                f"{r.peak_mib:,.0f}" if r.peak_mib else "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_atomically(path: str | os.PathLike, write: Callable[[object], None]) -> None:
    """``write(file)`` into a temporary file next to ``path``, then rename it over ``path``, so that a run
    killed mid-write leaves the previous complete file, never a truncated one."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, data: dict) -> None:
    """``data`` as indented JSON, replaced atomically."""

    def write(f):
        json.dump(data, f, indent=1)
        f.write("\n")

    write_atomically(path, write)


def write_results(
    path_prefix: str, env: dict, results: list[Result], not_run: list[tuple[str, str]] | None = None
) -> tuple[str, str]:
    """Write ``<prefix>.json`` (environment + rows), ``<prefix>.csv`` (rows with device and commit) and
    ``<prefix>.txt`` (the environment and :func:`format_table`), each replaced atomically; ``not_run``
    lists the (group, provider) cases still to run (written to the .json and .txt, so that a run stopped
    by a time limit says what it never reached). Returns the .json and .csv paths."""
    os.makedirs(os.path.dirname(os.path.abspath(path_prefix)), exist_ok=True)
    rows = [asdict(r) for r in results]
    data = {"environment": env, "results": rows}
    if not_run is not None:
        data["not_run"] = [{"group": g, "provider": p} for g, p in not_run]
    write_json(path_prefix + ".json", data)

    def write_csv(f):
        writer = csv.DictWriter(f, fieldnames=["device", "commit"] + list(rows[0]) if rows else ["device"])
        writer.writeheader()
        for row in rows:
            writer.writerow({"device": env["device"], "commit": env["commit"], **row})

    write_atomically(path_prefix + ".csv", write_csv)
    header = ", ".join(f"{k} {env.get(k)}" for k in ("device", "torch", "triton", "transformers", "commit", "date", "malloc") if k in env)
    text = header + "\n\n" + format_table(results) + "\n"
    if not_run:
        text += f"\nnot run ({len(not_run)}):\n" + "".join(f"  {g} | {p}\n" for g, p in not_run)
    write_atomically(path_prefix + ".txt", lambda f: f.write(text))
    return path_prefix + ".json", path_prefix + ".csv"


def read_results(json_path: str | os.PathLike) -> tuple[dict, list[Result]]:
    """The environment and the results of a file :func:`write_results` wrote."""
    with open(json_path) as f:
        data = json.load(f)
    return data["environment"], [Result(**row) for row in data["results"]]


class JsonRecord:
    """A JSON results file of named sections of rows, rewritten atomically at every change (a new row, a value
    added to a row, an error), so that a kill at any moment keeps every number measured so far. It holds
    ``header`` (an ``environment`` block among it), ``finished`` (true only after :meth:`finish`),
    ``sections``, ``summary`` (``summarize(data)``, recomputed at every save) and ``errors``."""

    def __init__(self, path: str | os.PathLike, header: dict, summarize: Callable[[dict], dict] | None = None) -> None:
        self.path = path
        self.summarize = summarize
        self.data = {**header, "finished": False, "sections": {}, "summary": {}, "errors": []}
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.save()

    def save(self) -> None:
        if self.summarize is not None:
            self.data["summary"] = self.summarize(self.data)
        write_json(self.path, self.data)

    def add(self, section: str, row: dict) -> dict:
        """Append ``row`` to ``section`` and save; the caller fills the row further with :meth:`update`."""
        self.data["sections"].setdefault(section, []).append(row)
        self.save()
        return row

    def update(self, row: dict, **values) -> None:
        row.update(values)
        self.save()

    def error(self, message: str) -> None:
        self.data["errors"].append(message)
        self.save()

    def finish(self) -> None:
        self.data["finished"] = True
        self.save()


# ----- SIGTERM -----------------------------------------------------------------------------------------------


class Stopped(BaseException):
    """SIGTERM arrived (a time limit's ``timeout``): the results so far are already written. A BaseException,
    so that no ``except Exception`` around a case swallows it."""


def _forked_child_takes_default_sigterm() -> None:
    """In a child forked while :func:`stop_on_sigterm` is active, SIGTERM's default action comes back. The
    handler is Python code, which runs only between bytecodes of the main thread, so a child blocked in C
    would ignore the ``terminate()`` meant to end it, and its parent would wait for it at exit forever: seen
    with OpenVINO's model converter, which forks a child to send each usage report and, offline, that child
    hung resolving the host's name (a lock of the resolver held by another thread at the fork)."""
    if getattr(signal.getsignal(signal.SIGTERM), "stops_the_run", False):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


if hasattr(os, "register_at_fork"):  # once per process (this module is imported once); POSIX only
    os.register_at_fork(after_in_child=_forked_child_takes_default_sigterm)


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Stopped` (whose message is the signal's name) instead of
    killing the process, so that the caller can say what ran and exit cleanly; the previous handler comes
    back after."""

    def stop(signum, frame):
        raise Stopped(signal.Signals(signum).name)

    stop.stops_the_run = True  # what a forked child recognises and drops (_forked_child_takes_default_sigterm)
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_to_files(
    cases: list[Case],
    device: torch.device,
    path_prefix: str,
    env: dict,
    reps: int = 10,
    max_seconds: float | None = None,
    interleave: bool = False,
) -> tuple[list[Result], str | None]:
    """:func:`run_cases` with :func:`write_results` after every case (the cases still to run listed as not
    run), and SIGTERM ending the run cleanly. Returns the results and None, or, when stopped, the results
    so far and the signal's name (the files hold them)."""
    latest: list[Result] = []

    def after_each(partial: list[Result]) -> None:  # a time limit keeps every finished case, and the table
        latest[:] = partial
        write_results(path_prefix, env, partial, not_run=[(c.group, c.provider) for c in cases[len(partial):]])

    try:
        with stop_on_sigterm():
            results = run_cases(cases, device, reps=reps, after_each=after_each, max_seconds=max_seconds, interleave=interleave)
    except Stopped as exc:
        return list(latest), str(exc)
    write_results(path_prefix, env, results, not_run=[])
    return results, None
