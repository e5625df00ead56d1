"""`make mutate`: mutmut over the core, one group of modules at a time against the fast tests that cover it.

    python tests/mutate.py run [GROUP ...] [--jobs N]   # default: every group (hours on 2 cores)
    python tests/mutate.py run GROUP --recheck          # only the last run's survivors, against today's tests
    python tests/mutate.py report [GROUP ...]           # the per-module table of the last run(s)

mutmut reads one `[tool.mutmut]` table and runs, for each mutant, the selected tests that execute the
mutated function. A single selection for everything would make every masking mutant pay for spaCy and
every subprocess test; so each group runs in its own copy of the tree (build/mutate/GROUP, the
repository's files only) with its own mutated files, test selection and `-k` filter. The table in
pyproject.toml is the base; GROUPS below map modules to tests (docs/testing.md).

Score = killed / all checked mutants of a module: a survivor, a timeout (on a shared machine it proves
nothing) and a mutant no selected test executes all count as not killed.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build" / "mutate"


@dataclass(frozen=True)
class Group:
    name: str
    files: tuple[str, ...]  # mutated files (only_mutate)
    mutants: tuple[str, ...]  # mutant-name globs run (module.x_function__mutmut_N)
    tests: tuple[str, ...]  # test selection
    deselect: str = ""  # pytest -k expression
    cached_shards: bool = False  # tests/mutate_plugin.py: only where the mutated files cannot reach the pipeline
    # mutmut's CPU limit per mutant is 30 x (the tests' measured time + this): its default of 1 s is too
    # little where every mutant's tests load spaCy and annotate text first (a TypeError then "timed out").
    timeout_constant: float = 1.0


GROUPS = (
    Group("pipeline", ("contract/blocks.py", "contract/align.py"), ("contract.blocks.*", "contract.align.*"),
          ("tests/test_foundation.py", "tests/pipeline/test_units.py", "tests/pipeline/test_align_and_blocks.py")),
    Group("trainer", ("trainer/evaluate.py", "trainer/train.py"),
          ("trainer.evaluate.x_evaluate__*", "trainer.evaluate.x_evaluate_checkpoint__*",  # not main: the CLI
           "trainer.train.x_target_counts__*", "trainer.train.x_global_counts__*", "trainer.train.x_train_step__*"),
          ("tests/trainer/test_trainer_evaluate.py",
           "tests/trainer/test_trainer_ddp.py::test_gradients_identical_for_1x2B_accumulation_and_2_gloo_ranks"),
          cached_shards=True),
    # The span machinery: no spaCy, no subprocess — seconds per mutant.
    Group("masking", tuple(f"masking/{m}.py" for m in ("sbo", "replace", "sampler", "layout", "rng", "masker", "config")),
          tuple(f"masking.{m}.*" for m in ("sbo", "replace", "sampler", "layout", "rng", "masker", "config")),
          ("tests/masking/test_masking_realised.py", "tests/masking/test_masking_sampler.py",
           "tests/masking/test_masking_statistics.py", "tests/masking/test_masking_api.py"),
          "not linguistic and not shards"),
    # Entity / noun-phrase spans: needs the spaCy-annotated blocks.
    Group("masking-given", ("masking/given.py",), ("masking.given.*",),
          ("tests/masking/test_masking_realised.py", "tests/masking/test_masking_statistics.py",
           "tests/masking/test_masking_properties.py", "tests/masking/test_masking_api.py"),
          "linguistic or given or invariants", timeout_constant=60.0),
    # Reporting: `masking.stats.main` called in-process (a subprocess is not traced) and corpus' hand-worked
    # tests; spans come from a regex stand-in for spaCy. Only these tests: every masking test reads its
    # blocks through corpus.text_blocks, and would rebuild them for each corpus mutant.
    Group("masking-stats", ("masking/stats.py", "masking/corpus.py"), ("masking.stats.*", "masking.corpus.*"),
          ("tests/masking/test_masking_api.py",), "stats or corpus"),
)

KILLED, SURVIVED, NO_TESTS = {1, 3}, {0}, {5, 33}
TIMEOUT = {-24, 24, 36, 152, 255}
NOT_CHECKED = {None, 2, 34}


def _toml_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def prepare(group: Group) -> Path:
    """A copy of the tracked tree with this group's [tool.mutmut] table."""
    root = BUILD / group.name
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split()
    for f in files:
        src, dst = REPO / f, root / f
        if src.is_file() and not src.is_symlink() and not f.startswith(("build/", "mutants/")):
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists() or dst.stat().st_mtime < src.stat().st_mtime:
                shutil.copy2(src, dst)
    shared = REPO.parent / "shared"
    if shared.is_dir() and not (root / "shared").exists():  # tests that still read ../shared find it
        (root / "shared").symlink_to(shared.resolve())
    text = (REPO / "pyproject.toml").read_text()
    base = text[text.index("[tool.mutmut]"):]
    base = base[: base.index("\n[", 1)] if "\n[" in base[1:] else base
    table = [line for line in base.splitlines()[1:]
             if not line.startswith(("source_paths", "only_mutate", "pytest_add_cli_args_test_selection",
                                     "pytest_add_cli_args =")) and not line.startswith(("    \"tests/", "]"))]
    # mutmut mutates only under source_paths: the base's, plus the packages this group's files live in
    # (contract/ is otherwise only copied, and its block builder and aligner would go unmutated).
    paths = json.loads(re.search(r"^source_paths = (.*)$", base, re.M).group(1))
    paths += sorted({f.split("/")[0] for f in group.files} - set(paths))
    args = ["-p", "no:cacheprovider", "-q"] + (["-k", group.deselect] if group.deselect else [])
    table += [f"source_paths = {_toml_list(tuple(paths))}", f"only_mutate = {_toml_list(group.files)}",
              f"pytest_add_cli_args = {_toml_list(tuple(args))}", f"timeout_constant = {group.timeout_constant}",
              f"pytest_add_cli_args_test_selection = {_toml_list(group.tests)}"]
    (root / "pyproject.toml").write_text(text.replace(base, "[tool.mutmut]\n" + "\n".join(table) + "\n"))
    return root


def _verdicts(group: Group) -> dict[str, int | None]:
    """mutant name -> mutmut exit code, for this group's mutants in its last run."""
    out = {}
    for meta in sorted((BUILD / group.name / "mutants").rglob("*.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if any(fnmatch.fnmatch(name, p) for p in group.mutants):
                out[name] = code
    return out


def _env(group: Group, root: Path) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if group.cached_shards:  # through the environment: mutmut's cached verdicts key on its pytest arguments
        env |= {"PYTEST_PLUGINS": "tests.mutate_plugin", "MUTATE_SHARD_CACHE": str(root / "shard-cache")}
    return env


def run(groups: list[Group], jobs: int, recheck: bool = False) -> None:
    """`recheck`: run again only the last run's survivors and unreached mutants, against the tests as they
    are now (tests added to the selected files; a changed selection would make mutmut drop every verdict)."""
    mutmut = Path(sys.executable).parent / "mutmut"
    for g in groups:
        names = list(g.mutants)
        if recheck:
            names = [n for n, code in _verdicts(g).items() if code in SURVIVED | NO_TESTS]
            if not names:
                print(f"[mutate] {g.name}: nothing to recheck", flush=True)
                continue
        root = prepare(g)
        if not recheck:
            shutil.rmtree(root / "mutants", ignore_errors=True)
        print(f"[mutate] {g.name}: {len(names) if recheck else ' '.join(names)} mutants against {' '.join(g.tests)}",
              flush=True)
        subprocess.run(["nice", "-n", "19", str(mutmut), "run", "--max-children", str(jobs), *names],
                       cwd=root, env=_env(g, root), check=False)


def report(groups: list[Group]) -> int:
    by_module: dict[str, Counter] = defaultdict(Counter)
    survivors = []
    for g in groups:
        for name, code in _verdicts(g).items():
            if code in NOT_CHECKED:
                continue
            kind = ("killed" if code in KILLED else "survived" if code in SURVIVED else "no tests"
                    if code in NO_TESTS else "timeout" if code in TIMEOUT else "suspicious")
            by_module[re.sub(r"\.x.*$", "", name)][kind] += 1
            if kind != "killed":
                survivors.append(f"{kind:>10}  {g.name:<14} {name}")
    if not by_module:
        print("no checked mutants: run `make mutate` first")
        return 1
    print(f"{'module':<22} {'mutants':>7} {'killed':>6} {'survived':>8} {'no tests':>8} {'timeout':>7} {'score':>6}")
    for module, c in sorted(by_module.items()):
        n = sum(c.values())
        print(f"{module:<22} {n:>7} {c['killed']:>6} {c['survived']:>8} {c['no tests']:>8} {c['timeout']:>7} "
              f"{c['killed'] / n:>6.1%}")
    BUILD.mkdir(parents=True, exist_ok=True)
    (BUILD / "survivors.txt").write_text("\n".join(sorted(survivors)) + "\n")
    print(f"{len(survivors)} not killed: {BUILD / 'survivors.txt'} (in build/mutate/GROUP: `mutmut show NAME`)")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tests/mutate.py", description=__doc__.splitlines()[0])
    p.add_argument("command", choices=("run", "report"))
    p.add_argument("groups", nargs="*", help=f"default: all of {[g.name for g in GROUPS]}")
    p.add_argument("--jobs", type=int, default=1, help="mutants tested in parallel (the machine is shared)")
    p.add_argument("--recheck", action="store_true",
                   help="run: only the last run's survivors and unreached mutants, against the current tests")
    args = p.parse_args(argv)
    unknown = set(args.groups) - {g.name for g in GROUPS}
    if unknown:
        print(f"error: unknown group(s) {sorted(unknown)}; choose from {[g.name for g in GROUPS]}", file=sys.stderr)
        return 2
    groups = [g for g in GROUPS if not args.groups or g.name in args.groups]
    if args.command == "run":
        run(groups, args.jobs, args.recheck)
    return report(groups)


if __name__ == "__main__":
    sys.exit(main())
