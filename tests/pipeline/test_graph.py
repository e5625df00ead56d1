"""The memory rule, read off the pipeline graph itself: no step groups documents or blocks.

Beam's FnApiRunner keeps the whole input of every grouping step in memory, and Beam's Dask GroupByKey
is a dask.bag groupby, so a grouping of documents or blocks would hold the corpus. The graph that
`python -m pipeline` builds (pipeline.run.build_graph, the same function run() calls) is translated to
the runner API proto, and every GroupByKey in it is checked: it must be one of the two allowed
groupings (the Reshuffle of the planned ranges, and the gathering of the small per-range results for
the manifest), and nothing may flow into it except what those carry.
"""

from __future__ import annotations

from pathlib import Path

import apache_beam as beam
from apache_beam.portability import common_urns
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from pipeline.run import build_graph, plan_job
from tests.conftest import VOCAB

# The two groupings the design allows, and the only non-structural steps allowed upstream of each.
ALLOWED = {
    "ProcessRanges/DistributeRanges/": {"ProcessRanges/CreateRanges/"},
    "WriteManifest/Gather/": {"ProcessRanges/CreateRanges/", "ProcessRanges/DistributeRanges/", "ProcessRanges/ProcessRange"},
}


def _groupings(tmp_path: Path, *flags: str) -> dict[str, set[str]]:
    """{GroupByKey unique name: the unique names of every primitive transform upstream of it}."""
    src = tmp_path / "w.txt"
    src.write_text('<doc id="1" url="u" title="T">\nSome text.\n</doc>\n', encoding="utf-8")
    job = plan_job(["--input", str(src), "--vocab", str(VOCAB), "--output", str(tmp_path / "out"), *flags])
    p = beam.Pipeline(runner=FnApiRunner())
    build_graph(p, job)
    proto = p.to_runner_api()
    transforms = proto.components.transforms
    producer = {pc: tid for tid, t in transforms.items() if not t.subtransforms for pc in t.outputs.values()}

    def upstream(tid: str) -> set[str]:
        seen, todo = set(), [tid]
        while todo:
            t = transforms[todo.pop()]
            for pc in t.inputs.values():
                if pc in producer and producer[pc] not in seen:
                    seen.add(producer[pc])
                    todo.append(producer[pc])
        return {transforms[x].unique_name for x in seen}

    gbk = common_urns.primitives.GROUP_BY_KEY.urn
    return {t.unique_name: upstream(tid) for tid, t in transforms.items() if t.spec.urn == gbk}


def _check(groupings: dict[str, set[str]]) -> None:
    assert groupings, "no GroupByKey at all: the graph was not built"
    for name, ancestors in groupings.items():
        [prefix] = [p for p in ALLOWED if name.startswith(p)] or [f"grouping {name!r} (groups documents or blocks?)"]
        assert prefix in ALLOWED, prefix
        foreign = {a for a in ancestors if not a.startswith(prefix) and not any(a.startswith(ok) for ok in ALLOWED[prefix])}
        assert not foreign, f"{name} is fed by {sorted(foreign)}"


def test_no_step_groups_documents_or_blocks(tmp_path: Path) -> None:
    _check(_groupings(tmp_path, "--no-annotate"))


def test_no_step_groups_documents_or_blocks_with_annotation(tmp_path: Path) -> None:
    _check(_groupings(tmp_path, "--annotate", "--direct_num_workers=1"))
