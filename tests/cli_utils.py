"""Shared by the command-line tests: run ``mobilevitv2`` in-process, and the one-line error rule."""

from __future__ import annotations

from mobilevitv2.cli import main


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    """Exit status 1 and exactly one line on stderr, ``mobilevitv2 <command>: error: ...``, holding every
    fragment; never a traceback."""
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("mobilevitv2 ") and "error:" in lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
