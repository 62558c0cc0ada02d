"""Run the fuzz targets of ``tests.fuzz.targets`` with atheris (libFuzzer for Python).

    python -m tests.fuzz.run TARGET --seconds 60      # fuzz one target for a minute
    python -m tests.fuzz.run all --seconds 300        # each target in turn (make fuzz)
    python -m tests.fuzz.run TARGET FILE...           # replay inputs without atheris (a traceback)
    python -m tests.fuzz.run --list

Corpus: the seeds and regressions in ``tests/fuzz/corpus/TARGET`` are read, never written; inputs
that find new coverage go to ``--work DIR/TARGET`` (a fresh temporary directory unless given, so
``make fuzz`` passes ``tests/fuzz/work`` and a long run builds on the last). A crash (any
exception a target lets through: the contract in targets.py) is written by libFuzzer to
``--crashes DIR`` as ``TARGET-crash-<sha1>`` and the run exits non-zero; tests/fuzz/README.md
says how it becomes a corpus entry and a regression test. The last line printed for each target
is ``TARGET: N runs in S s, ok`` (or ``crashed: FILE``).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
CRASHES = HERE / "crashes"
ROOT = HERE.parents[1]
MAX_LEN = 16 * 1024  # the OCSP responder's MAX_BODY; larger than every seed
_RUNS = re.compile(rb"stat::number_of_executed_units: *(\d+)")
_EXCEPTION = re.compile(rb"=== Uncaught Python exception: ===\n(.*?)\n==\d+== ", re.S)


def fuzz(name: str, seconds: int, work: Path, crashes: Path) -> None:
    """Fuzz ``name`` in this process (atheris takes it over and exits)."""
    import atheris

    from tests.fuzz import targets

    target = targets.TARGETS[name]
    # Targets import what they test when first called: instrumented here (targets.INSTRUMENT;
    # cryptography's parsers are Rust, atheris cannot see inside them).
    with atheris.instrument_imports(include=list(targets.INSTRUMENT[name])):
        for seed in sorted((CORPUS / name).iterdir()):
            target(seed.read_bytes())

    work.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.argv[0],
        str(work),
        str(CORPUS / name),
        f"-max_total_time={seconds}",
        f"-max_len={MAX_LEN}",
        "-timeout=20",
        "-rss_limit_mb=2048",
        f"-artifact_prefix={crashes}/{name}-",
        "-print_final_stats=1",
    ]
    if name in targets.STRUCTURED:
        from tests.fuzz.mutate import der_mutator

        # atheris.Mutate is looked up per call: Fuzz() swaps in the libFuzzer one.
        atheris.Setup(argv, target, custom_mutator=der_mutator(lambda data, size: atheris.Mutate(data, size)))
    else:
        atheris.Setup(argv, target)
    atheris.Fuzz()


def replay(name: str, files: list[Path]) -> None:
    from tests.fuzz import targets

    for path in files:
        targets.TARGETS[name](path.read_bytes())
        print(f"{path}: ok")


def run_one(name: str, seconds: int, work: Path | None, crashes: Path) -> tuple[bool, int, str]:
    """Fuzz ``name`` in a child process; (passed, runs, what to say)."""
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as scratch:
        directory = (work / name) if work is not None else Path(scratch)
        before = set(crashes.glob(f"{name}-*")) if crashes.exists() else set()
        started = time.monotonic()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.fuzz.run",
                name,
                "--seconds",
                str(seconds),
                "--work",
                str(directory),
                "--crashes",
                str(crashes),
                "--in-process",
            ],
            cwd=ROOT,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            },
            capture_output=True,
            timeout=seconds + 300,
        )
        elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    found = sorted(set(crashes.glob(f"{name}-*")) - before) if crashes.exists() else []
    counted = _RUNS.findall(output)
    runs = int(counted[-1]) if counted else 0
    if result.returncode == 0 and not found:
        return True, runs, f"{name}: {runs} runs in {elapsed:.0f} s, ok"
    exception = _EXCEPTION.search(output)
    why = (exception.group(1) if exception else output[-3000:]).decode(errors="replace")
    where = ", ".join(str(f) for f in found) or "no input saved"
    return False, runs, f"{name}: crashed after {runs} runs: {where}\n{why}"


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", nargs="?", help="a target of tests/fuzz/targets.py, or all")
    parser.add_argument("files", nargs="*", type=Path, help="replay these inputs instead of fuzzing")
    parser.add_argument("--seconds", type=int, default=60, help="how long to fuzz each target")
    parser.add_argument("--work", type=Path, default=None, help="keep the grown corpus in WORK/TARGET")
    parser.add_argument("--crashes", type=Path, default=CRASHES, help="where crashing inputs go")
    parser.add_argument("--list", action="store_true", help="list the targets")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args(args)
    if options.in_process:
        fuzz(
            options.target,
            options.seconds,
            options.work or Path(tempfile.mkdtemp()),
            options.crashes.resolve(),
        )
        return 0
    from tests.fuzz.targets import TARGETS

    if options.list or not options.target:
        print("\n".join(sorted(TARGETS)))
        return 0
    names = sorted(TARGETS) if options.target == "all" else [options.target]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"no target {unknown[0]!r} (try --list)")
    if options.files:
        replay(names[0], options.files)
        return 0
    failed = 0
    for name in names:
        passed, _, said = run_one(name, options.seconds, options.work, options.crashes.resolve())
        print(said, flush=True)
        failed += not passed
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
