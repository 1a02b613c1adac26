"""`make mutation`: mutation testing of the core against its own unit tests.

mutmut (configured in pyproject's [tool.mutmut]) mutates the pure core (remediation/policy.py,
classify.py, facts.py, events.py, config.py, scope.py) and the act step (act.py, the shell's
decisions), and runs, for each mutant, the fast-tier tests listed there that reach the
mutated function (no Azurite, no network: the act step's stand-ins are in-memory). Every
run starts from an empty mutants/ so no verdict is carried over from older code or tests.

The report gives, per file, killed/total and the percentage, then every surviving mutant
(its name and a one-line diff) grouped by file. A survivor named in
tests/mutation-equivalents.txt (`<mutant name>  # why it is equivalent`) is listed apart and
counts as killed: the percentage is (killed + equivalent) / total. Timeouts and mutants a type
check caught count as killed too; skipped mutants are left out of the total. A mutant with no
test reaching it ("no tests"), a suspicious one or one that crashed the interpreter counts as
surviving and is listed with that status.

Exit status: 0 when every file is at or above the threshold (90%), 1 when one is below,
2 when mutmut itself failed. `--report-only` prints the report of the last run again
(after editing tests/mutation-equivalents.txt, say) without running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mutmut.mutation.diff_apply import get_diff_for_mutant

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "mutants"
EQUIVALENTS = ROOT / "tests" / "mutation-equivalents.txt"
LOG = MUTANTS / "mutmut-run.log"
THRESHOLD = 90.0

# mutmut's exit codes per mutant (mutmut.stats.status_by_exit_code, 3.8.1).
KILLED = {1, 3, 36, 37, -24, 24, 152, 255}  # failed test, pytest error, timeout, type check
SKIPPED = {34}
STATUS = {
    0: "survived",
    1: "killed",
    2: "interrupted",
    3: "killed",
    5: "no tests",
    33: "no tests",
    34: "skipped",
    35: "suspicious",
    36: "timeout",
    37: "caught by type check",
    -24: "timeout",
    24: "timeout",
    152: "timeout",
    255: "timeout",
    -11: "segfault",
    -9: "segfault",
    None: "not checked",
}
PROGRESS = re.compile(r"(\d+)/(\d+)\s+\S+\s+(\d+)")
SPINNER = re.compile("^\\s*[\u2800-\u28ff]")  # mutmut's braille spinner frames


@dataclass
class FileResult:
    path: str
    total: int = 0
    killed: int = 0
    survivors: list[tuple[str, str]] = field(default_factory=list)  # (name, status)
    equivalent: list[str] = field(default_factory=list)

    @property
    def percent(self) -> float:
        if not self.total:
            return 100.0
        return 100.0 * (self.killed + len(self.equivalent)) / self.total


def files_under_test() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    return list(config["only_mutate"])


def read_equivalents() -> dict[str, str]:
    """Mutant name -> why it is equivalent."""
    listed: dict[str, str] = {}
    if not EQUIVALENTS.exists():
        return listed
    for number, raw in enumerate(EQUIVALENTS.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, why = line.partition("#")
        name = name.strip()
        if not why.strip():
            print(f"warning: {EQUIVALENTS.name}:{number}: {name} says not why it is equivalent")
        listed[name] = why.strip()
    return listed


def run_mutmut() -> int:
    shutil.rmtree(MUTANTS, ignore_errors=True)
    MUTANTS.mkdir()
    command = [sys.executable, "-m", "mutmut", "run"]
    print(f"$ {' '.join(command[1:])}  (output in {LOG.relative_to(ROOT)})", flush=True)
    with LOG.open("w") as log:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter, fixed arguments
            command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        last = ""
        while True:
            try:
                return process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                now = progress()
                if now and now != last:
                    print(f"  {now}", flush=True)
                    last = now


def progress() -> str:
    """mutmut's last progress line: tested/total, killed, ..."""
    with LOG.open("rb") as log:
        log.seek(max(0, LOG.stat().st_size - 4096))
        tail = log.read().decode(errors="replace")
    lines = [line for line in re.split(r"[\r\n]", tail) if PROGRESS.search(line)]
    return SPINNER.sub("", lines[-1]).strip() if lines else ""


def log_tail(lines: int) -> str:
    if not LOG.exists():
        return ""
    text = LOG.read_text(errors="replace").replace("\r", "\n")
    kept = [line for line in text.splitlines() if line.strip() and not SPINNER.match(line)]
    return "\n".join(kept[-lines:])


def one_line_diff(name: str, path: str) -> str:
    """The changed lines of a mutant as `- old  →  + new` (mutmut's own diff, condensed)."""
    try:
        diff = get_diff_for_mutant(name, path=path)
    except Exception as error:  # a diff is a courtesy: never lose the report over one
        return f"(no diff: {error})"
    removed, added = [], []
    for line in diff.splitlines():
        if line.startswith(("---", "+++")):
            continue
        if line.startswith("-"):
            removed.append(line[1:].strip())
        elif line.startswith("+"):
            added.append(line[1:].strip())
    old = " / ".join(removed) or "(nothing)"
    new = " / ".join(added) or "(nothing)"
    return f"- {old}  →  + {new}"


def collect(paths: Iterable[str], equivalents: dict[str, str]) -> list[FileResult]:
    results = []
    for path in paths:
        result = FileResult(path)
        meta = MUTANTS / f"{path}.meta"
        if not meta.exists():
            raise SystemExit(f"{meta.relative_to(ROOT)} is missing: did mutmut run on {path}?")
        exit_codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
        for name, code in sorted(exit_codes.items(), key=lambda item: natural(item[0])):
            if code in SKIPPED:
                continue
            result.total += 1
            if code in KILLED:
                result.killed += 1
            elif name in equivalents:
                result.equivalent.append(name)
            else:
                result.survivors.append((name, STATUS.get(code, f"exit {code}")))
        results.append(result)
    return results


def natural(name: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def report(results: list[FileResult], equivalents: dict[str, str], threshold: float) -> bool:
    os.chdir(ROOT)  # mutmut's helpers read mutants/ and pyproject.toml from the current directory
    width = max(len(r.path) for r in results)
    print()
    print(f"Mutation score per file (killed + listed equivalent) / total; threshold {threshold:g}%")
    for r in results:
        flag = "" if r.percent >= threshold else "   BELOW THRESHOLD"
        equivalent = f" (+{len(r.equivalent)} equivalent)" if r.equivalent else ""
        print(
            f"  {r.path:<{width}}  {r.killed + len(r.equivalent):>4}/{r.total:<4} {r.percent:6.1f}%"
            f"  killed {r.killed}{equivalent}, surviving {len(r.survivors)}{flag}"
        )
    total = sum(r.total for r in results)
    killed = sum(r.killed + len(r.equivalent) for r in results)
    print(f"  {'all':<{width}}  {killed:>4}/{total:<4} {100.0 * killed / max(total, 1):6.1f}%")

    survivors = sum(len(r.survivors) for r in results)
    print()
    print(f"Surviving mutants ({survivors}); `mutmut show <name>` prints the full diff:")
    for r in results:
        if not r.survivors:
            continue
        print(f"  {r.path} ({len(r.survivors)})")
        for name, status in r.survivors:
            label = "" if status == "survived" else f" [{status}]"
            print(f"    {name}{label}: {one_line_diff(name, r.path)}")

    listed = [(r.path, name) for r in results for name in r.equivalent]
    if listed:
        print()
        print(f"Equivalent, listed in {EQUIVALENTS.relative_to(ROOT)} ({len(listed)}):")
        for path, name in listed:
            why = f"  # {equivalents[name]}" if equivalents[name] else ""
            print(f"    {name}: {one_line_diff(name, path)}{why}")

    known = {name for r in results for name in r.equivalent}
    stale = sorted(set(equivalents) - known)
    if stale:
        print()
        print(f"warning: listed in {EQUIVALENTS.name} but not a survivor now (killed, renamed")
        print("or gone; mutant numbers move when a function changes):")
        for name in stale:
            print(f"    {name}")

    below = [r.path for r in results if r.percent < threshold]
    print()
    if below:
        print(f"FAIL: below {threshold:g}% killed: {', '.join(below)}")
    else:
        print(f"OK: every file at or above {threshold:g}% killed")
    return not below


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--report-only", action="store_true", help="report on the last run in mutants/"
    )
    parser.add_argument("--threshold", type=float, default=THRESHOLD, help="percent, per file")
    args = parser.parse_args()

    started = time.monotonic()
    if not args.report_only:
        code = run_mutmut()
        if code != 0:
            print(log_tail(80))
            print(f"mutmut run failed (exit {code}); full output in {LOG.relative_to(ROOT)}")
            return 2
        print(f"  {progress()}")
        print(f"mutmut run took {time.monotonic() - started:.0f} s")

    equivalents = read_equivalents()
    results = collect(files_under_test(), equivalents)
    return 0 if report(results, equivalents, args.threshold) else 1


if __name__ == "__main__":
    sys.exit(main())
