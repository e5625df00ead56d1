"""The output directory: its rules (refuse a non-empty or foreign directory), atomic small writes,
and cleanup, all through Beam's FileSystems layer."""

from __future__ import annotations

import contextlib
import re
import uuid

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from contract.rundir import WriteFailed
from contract.schema import DEAD_LETTER, MANIFEST, TOKENIZER_FILE, UNIGRAM_FILE, VOCAB_FILE

# Every name this pipeline writes: shards (today's `shard-RRRRR-PPPP.arrow` and the earlier
# `shard-NNNNN-of-NNNNN.arrow`), temporaries, the side files.
_OWN_FILES = re.compile(
    rf"^(shard-\d+-\d+\.arrow|shard-\d+-of-\d+\.arrow|.*\.tmp|{re.escape(MANIFEST)}|{re.escape(VOCAB_FILE)}|"
    rf"{re.escape(TOKENIZER_FILE)}|{re.escape(UNIGRAM_FILE)}|{re.escape(DEAD_LETTER)})$"
)
TMP_SUFFIX = ".tmp"


def join(directory: str, name: str) -> str:
    return FileSystems.join(directory, name)


def temp_name(path: str) -> str:
    """A name no other attempt uses: a retried or duplicated bundle never writes over a live temp file."""
    return f"{path}.{uuid.uuid4().hex}{TMP_SUFFIX}"


def prepare_output(directory: str, overwrite: bool) -> None:
    """Refuse a non-empty output directory unless `overwrite`; with it, delete what an earlier run
    wrote (so no stale shard survives a change of plan) but refuse foreign files."""
    if not FileSystems.exists(directory):
        FileSystems.mkdirs(directory)
        return
    found = [m.path for m in FileSystems.match([join(directory, "*")])[0].metadata_list]
    if not found:
        return
    if not overwrite:
        raise FileExistsError(f"{directory} is not empty ({len(found)} files); pass --overwrite to replace it")
    foreign = [p for p in found if not _OWN_FILES.match(p.rsplit("/", 1)[-1])]
    if foreign:
        raise FileExistsError(f"{directory} holds files this pipeline did not write, e.g. {foreign[0]}; refusing to mix")
    manifest = [p for p in found if p.endswith("/" + MANIFEST)]
    FileSystems.delete(manifest)  # first, so an interrupted delete never leaves a valid-looking dir
    FileSystems.delete([p for p in found if p not in manifest])


def remove_temporaries(directory: str) -> None:
    """Delete temp files left by failed bundle attempts (called once every range has finished)."""
    stale = [m.path for m in FileSystems.match([join(directory, "*" + TMP_SUFFIX)])[0].metadata_list]
    if stale:
        FileSystems.delete(stale)


def write_atomic(path: str, data: bytes) -> None:
    """Write under a temporary name, then rename: no partial file is ever visible as `path`."""
    tmp = temp_name(path)
    try:
        with FileSystems.create(tmp) as f:
            f.write(data)
        FileSystems.rename([tmp], [path])
    except OSError as e:  # a full disk / I/O error: no partial file left behind, one line naming the file
        with contextlib.suppress(Exception):
            FileSystems.delete([tmp])
        raise WriteFailed(path, e) from None


def read_text(path: str) -> str:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read().decode("utf-8")
