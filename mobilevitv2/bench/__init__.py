"""The benchmark harness behind ``mobilevitv2 bench`` and the scripts in ``bench/``, one module per purpose:

- :mod:`~mobilevitv2.bench.harness`: cases and results, timing, copy bandwidth, the environment block, the
  results files (written atomically after every case) and the table, SIGTERM handling;
- :mod:`~mobilevitv2.bench.checks`: the output check every provider passes before it is timed;
- :mod:`~mobilevitv2.bench.models` and :mod:`~mobilevitv2.bench.ops`: the case builders (whole models; the
  attention core, attention modules and the transformer layer);
- :mod:`~mobilevitv2.bench.suites`: the default sweep and the performance targets;
- :mod:`~mobilevitv2.bench.command`: ``mobilevitv2 bench``.

Nothing here is imported by the model package (only the CLI's ``bench`` command, on use), and this file
imports nothing, so that a script can import :mod:`~mobilevitv2.bench.harness` alone.
"""
