"""`make mutate` summary: mutmut's verdicts per module, read from mutants/**/*.meta (docs/testing.md).

    python tests/mutation_report.py [GLOB ...]      # default: every mutant that was checked

Score = killed / (killed + survived + no tests + timeout + suspicious): a mutant no fast test reaches
counts against the score, a timeout counts as *not* killed (on a shared machine it proves nothing).
"""

from __future__ import annotations

import fnmatch
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

KILLED = {1, 3}
SURVIVED = {0}
NO_TESTS = {5, 33}
TIMEOUT = {-24, 24, 36, 152, 255}
NOT_CHECKED = {None, 2, 34}


def verdicts(root: Path = Path("mutants")) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for meta in sorted(root.rglob("*.meta")):
        out.update(json.loads(meta.read_text())["exit_code_by_key"])
    return out


def main(argv: list[str]) -> int:
    pattern = argv or ["*"]
    by_module: dict[str, Counter] = defaultdict(Counter)
    survivors: list[str] = []
    for name, code in verdicts().items():
        if code in NOT_CHECKED or not any(fnmatch.fnmatch(name, p) for p in pattern):
            continue
        module = re.sub(r"\.x.*$", "", name)
        kind = ("killed" if code in KILLED else "survived" if code in SURVIVED else "no tests" if code in NO_TESTS
                else "timeout" if code in TIMEOUT else "suspicious")
        by_module[module][kind] += 1
        if kind != "killed":
            survivors.append(f"{kind:>10}  {name}")
    if not by_module:
        print("no checked mutants: run `make mutate` first")
        return 1
    print(f"{'module':<22} {'mutants':>7} {'killed':>6} {'survived':>8} {'no tests':>8} {'timeout':>7} {'score':>6}")
    total: Counter = Counter()
    for module, c in sorted(by_module.items()):
        n = sum(c.values())
        total.update(c)
        print(f"{module:<22} {n:>7} {c['killed']:>6} {c['survived']:>8} {c['no tests']:>8} {c['timeout']:>7} "
              f"{c['killed'] / n:>6.1%}")
    n = sum(total.values())
    print(f"{'all':<22} {n:>7} {total['killed']:>6} {total['survived']:>8} {total['no tests']:>8} "
          f"{total['timeout']:>7} {total['killed'] / n:>6.1%}")
    Path("mutants/survivors.txt").write_text("\n".join(sorted(survivors)) + "\n")
    print(f"{len(survivors)} not killed: mutants/survivors.txt (`mutmut show NAME` prints the diff)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
