"""Wikipedia's own dumps (`--format wikidump`): `*-pages-articles*.xml.bz2` to article documents.

Planning (`plan_dump`): a multistream dump (`…-pages-articles-multistream*.xml*.bz2`, many concatenated
bz2 streams of 100 pages each) whose index lies beside it under Wikimedia's own name
(`index_path`: `…-multistream-index*.txt*.bz2`) is cut at stream starts into ranges of about
`split_bytes` compressed bytes, so one dump spreads over many workers. Without an index a dump is one
range. The index files themselves, if a glob matches them, plan to no range.

Reading (`frame_dump`): the compressed bytes are decompressed stream by stream (bz2.BZ2Decompressor,
so each break is known by its compressed byte offset) and parsed incrementally (XMLPullParser), one
`<page>` in memory at a time. Each page becomes a `RawDocument` holding what WikiExtractor's own
command line writes inside its `<doc>` for that page (title line, blank line, text), so
`clean_document` treats it exactly like the `wikiextractor` format; or a `PageSkip` (another
namespace, a redirect, a disambiguation page, no text left), counted by reason in the manifest; or a
`StreamBreak` (truncated or corrupt bz2, malformed XML), a dead letter naming the file and offset.
After a break the reader resumes at the next bz2 stream start (multistream dumps), so a bad block
costs at most the pages of its stream.

Wikitext to text is WikiExtractor 3.1.0's `Extractor`, used as a library (see `extract_text`).
"""

from __future__ import annotations

import bz2
import functools
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import BinaryIO
from xml.sax.saxutils import escape

from contract.cli import UsageError
from pipeline.documents import RawDocument, Rejection

FORMAT = "wikidump"
CHUNK_BYTES = 1 << 18  # compressed bytes read at a time
OUT_BYTES = 1 << 20  # decompressed bytes handed on at a time (bz2 can expand a read 100-fold and more)
# A bz2 stream header ("BZh" + level) followed by a block magic (or, for an empty stream, the
# end-of-stream magic). Streams of a multistream dump are byte-aligned, their blocks are not, so
# this finds the next stream start after a break (a false match in compressed data has odds 2^-80).
_STREAM_START = re.compile(rb"BZh[1-9](?:1AY&SY|\x17rE8P\x90)")
# Template names (first letter either case) that mark an English Wikipedia disambiguation page:
# Template:Disambiguation, its redirects, and the specialised family of Category:Disambiguation
# message boxes. `__DISAMBIG__` is the magic word those templates emit.
_DISAMBIGUATION = re.compile(
    r"\{\{\s*(?:[Tt]emplate\s*:\s*)?(?:[Dd]isambiguation|[Dd]isambig|[Dd]isamb|[Dd]ab|DAB|[Dd]is|"
    r"[Hh]ndis|[Gg]eodis|[Nn]umberdis|[Mm]athdab|[Hh]ospitaldis|[Ss]chooldis|[Rr]oaddis|"
    r"[Ll]etter-[Nn]umber [Cc]ombination [Dd]isambiguation|[Ll]etter-NumberCombDisambig|"
    r"[Cc]hinese title disambiguation|[Gg]enus disambiguation|[Ss]pecies Latin name disambiguation|"
    r"[Cc]all sign disambiguation|[Cc]aselaw disambiguation|[Mm]il-unit-dis|[Aa]irport disambiguation)"
    r"\s*(?:\||\}\})"
    r"|__DISAMBIG__"
)
_DUMP_ESCAPES = {'"': "&quot;"}  # MediaWiki's dump writer escapes & < > " in element text


class SkipReason(StrEnum):
    NAMESPACE = "namespace"  # not an article: <ns> other than 0 (talk, user, template, ...)
    REDIRECT = "redirect"
    DISAMBIGUATION = "disambiguation"
    EMPTY = "empty"  # no text left after extraction


@dataclass(frozen=True)
class PageSkip:
    """A page that is not an article; counted as `skipped.<reason>`, never a dead letter."""

    source: str
    doc_id: str
    reason: SkipReason


@dataclass(frozen=True)
class StreamBreak:
    """Unreadable dump bytes: the pages from `offset` to where reading resumed are lost."""

    source: str
    offset: int  # compressed byte offset of the bz2 stream (or bytes) that could not be read
    reason: str  # "bz2_truncated", "bz2_corrupt", "xml_malformed", "not_a_bz2_stream"
    detail: str

    def rejection(self) -> Rejection:
        return Rejection(self.source, f"{self.source}@{self.offset}", self.reason, self.detail)


DumpRecord = RawDocument | PageSkip | StreamBreak


# ---------------------------------------------------------------------------------------------
# Planning


def index_path(dump_path: str) -> str | None:
    """Where Wikimedia puts a multistream dump's index: `X-multistream.xml.bz2` ->
    `X-multistream-index.txt.bz2`, `X-multistream1.xml-p1p41242.bz2` -> `X-multistream-index1.txt-p1p41242.bz2`."""
    head, name = dump_path.rsplit("/", 1) if "/" in dump_path else ("", dump_path)
    if "-multistream" not in name or ".xml" not in name or is_index(name):
        return None
    index = name.replace("-multistream", "-multistream-index", 1).replace(".xml", ".txt", 1)
    return f"{head}/{index}" if head else index


def is_index(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return "-multistream-index" in name and ".txt" in name


def read_stream_offsets(index: str) -> list[int]:
    """The distinct stream offsets of an index (`offset:page_id:title` lines), ascending."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    offsets: set[int] = set()
    with FileSystems.open(index, compression_type=CompressionTypes.AUTO) as f:
        for number, line in enumerate(iter(f.readline, b""), 1):
            head = line.split(b":", 1)[0].strip()
            if not head.isdigit():
                if line.strip():
                    raise ValueError(f"{index}: line {number} is not 'offset:page_id:title'")
                continue
            offsets.add(int(head))
    return sorted(offsets)


def plan_dump(path: str, size: int, split_bytes: int) -> list[tuple[int, int | None]]:
    """(start, end) compressed byte ranges of one dump; `end` None: to the end of the file.

    A range holds the pages of the streams that start in it. With no index beside the dump (or an
    empty one) the dump is one range from byte 0. Offsets past the file's end are an error: the
    index belongs to another dump. Planning runs in the launcher, so a missing WikiExtractor is
    reported here, before any Beam work.
    """
    _wikiextractor()
    from apache_beam.io.filesystems import FileSystems

    if is_index(path):
        return []
    index = index_path(path)
    if index is None or not FileSystems.exists(index):
        return [(0, None)]
    offsets = read_stream_offsets(index)
    if not offsets:
        return [(0, None)]
    if offsets[-1] >= size:
        raise ValueError(f"{index}: stream offset {offsets[-1]} is past the end of {path} ({size} bytes)")
    starts = [0]  # the first range also reads the header stream (<siteinfo>, the <mediawiki> root)
    for offset in offsets:
        if offset - starts[-1] >= split_bytes:
            starts.append(offset)
    return [(s, e) for s, e in zip(starts, starts[1:], strict=False)] + [(starts[-1], None)]


# ---------------------------------------------------------------------------------------------
# Reading


def frame_dump(stream: BinaryIO, source: str, start: int = 0, end: int | None = None) -> Iterator[DumpRecord]:
    """Every page of the streams that start in [start, end) of a raw (still compressed) dump.

    `stream` must be the dump's bytes as stored, seekable. An uncompressed `.xml` dump (or one a
    reader already decompressed) is read whole as plain XML.
    """
    stream.seek(start)
    compressed = stream.read(3) == b"BZh"
    stream.seek(start)
    if not compressed and start == 0:
        yield from _pages(_plain_chunks(stream), source, own_root=True)
        return
    yield from _pages(_decompressed(stream, source, start, end), source, own_root=start == 0)


def _plain_chunks(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    while chunk := stream.read(CHUNK_BYTES):
        yield 0, chunk


def _decompressed(stream: BinaryIO, source: str, start: int, end: int | None) -> Iterator[tuple[int, bytes] | StreamBreak]:
    """(offset of its bz2 stream, decompressed bytes) for every stream starting in [start, end),
    and a StreamBreak wherever the bytes stop being readable (reading resumes at the next stream)."""
    pos = start  # compressed offset of the next stream
    while end is None or pos < end:
        stream.seek(pos)
        buf = stream.read(CHUNK_BYTES)
        if not buf:
            return
        if not _STREAM_START.match(buf):
            resume = _next_stream(stream, pos + 1, end)
            yield StreamBreak(source, pos, "not_a_bz2_stream", f"no bz2 stream starts at byte {pos}" + _resumed(resume))
            if resume is None:
                return
            pos = resume
            continue
        stream_start, fed = pos, 0  # fed: compressed bytes of this stream given to the decompressor
        decompressor = bz2.BZ2Decompressor()
        while True:
            try:
                out = decompressor.decompress(buf, max_length=OUT_BYTES)
            except OSError as e:
                resume = _next_stream(stream, stream_start + 1, end)
                yield StreamBreak(source, stream_start, "bz2_corrupt",
                                  f"bz2 stream at byte {stream_start}: {e} by byte {stream_start + fed + len(buf)}"
                                  + _resumed(resume))
                if resume is None:
                    return
                pos = resume
                break
            fed += len(buf)
            buf = b""
            if out:
                yield stream_start, out
            if decompressor.eof:
                pos = stream_start + fed - len(decompressor.unused_data)
                break
            if decompressor.needs_input:
                buf = stream.read(CHUNK_BYTES)
                if not buf:
                    yield StreamBreak(source, stream_start, "bz2_truncated", f"the file ends at byte "
                                      f"{stream_start + fed} inside the bz2 stream that starts at byte {stream_start}")
                    return


def _resumed(resume: int | None) -> str:
    if resume is None:
        return "; no later stream in this range"
    return f"; resumed at the stream at byte {resume}"


def _next_stream(stream: BinaryIO, pos: int, end: int | None) -> int | None:
    """Offset of the first bz2 stream start at or after `pos` and before `end` (None: the file's end)."""
    stream.seek(pos)
    tail = b""
    while (end is None or pos < end) and (chunk := stream.read(CHUNK_BYTES)):
        window = tail + chunk
        m = _STREAM_START.search(window)
        if m:
            found = pos - len(tail) + m.start()
            return found if end is None or found < end else None
        tail = window[-9:]  # a match may straddle two chunks (the pattern is 10 bytes)
        pos += len(chunk)
    return None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _pages(items: Iterator[tuple[int, bytes] | StreamBreak], source: str, own_root: bool) -> Iterator[DumpRecord]:
    """Parse the decompressed bytes page by page. Streams after the first carry no <mediawiki>
    root, so a parser that starts there (or anew after a break) is given one."""
    parser: ET.XMLPullParser | None = None
    root: ET.Element | None = None
    depth = 0
    abandoned: int | None = None  # the stream whose XML broke: its remaining bytes are skipped
    for item in items:
        if isinstance(item, StreamBreak):
            yield item
            parser, abandoned = None, None
            continue
        stream_start, data = item
        if stream_start == abandoned:
            continue
        if parser is None:
            parser, root, depth = ET.XMLPullParser(events=("start", "end")), None, 0
            if not own_root:
                parser.feed(b"<mediawiki>")
            own_root = False  # a parser made after a break starts mid-dump
        try:
            parser.feed(data)
            for event, elem in parser.read_events():
                if event == "start":
                    depth += 1
                    if root is None:
                        root = elem
                    continue
                depth -= 1
                if depth == 1:  # a direct child of <mediawiki>: <siteinfo> or <page>
                    if _local(elem.tag) == "page":
                        yield _page_record(elem, source, stream_start)
                    root.remove(elem)  # one page in memory at a time
        except ET.ParseError as e:
            yield StreamBreak(source, stream_start, "xml_malformed", f"in the bz2 stream at byte {stream_start}: {e}")
            parser, abandoned = None, stream_start


def _child_text(elem: ET.Element, name: str) -> str:
    for child in elem:
        if _local(child.tag) == name:
            return child.text or ""
    return ""


def _page_record(page: ET.Element, source: str, offset: int) -> DumpRecord:
    page_id, title, ns = _child_text(page, "id"), _child_text(page, "title"), _child_text(page, "ns")
    doc_id = f"{source}#{page_id or title}"
    if ns.strip() != "0":
        return PageSkip(source, doc_id, SkipReason.NAMESPACE)
    if any(_local(child.tag) == "redirect" for child in page):
        return PageSkip(source, doc_id, SkipReason.REDIRECT)
    revision = next((c for c in page if _local(c.tag) == "revision"), None)
    wikitext = _child_text(revision, "text") if revision is not None else ""
    if _DISAMBIGUATION.search(wikitext):
        return PageSkip(source, doc_id, SkipReason.DISAMBIGUATION)
    revid = _child_text(revision, "id") if revision is not None else ""
    timestamp = _child_text(revision, "timestamp") if revision is not None else ""
    paragraphs = extract_text(page_id, revid, title, wikitext, timestamp)
    if not any(p.strip() for p in paragraphs):
        return PageSkip(source, doc_id, SkipReason.EMPTY)
    # The body of WikiExtractor's <doc> for this page: its title line, a blank line, the text.
    body = escape(title, _DUMP_ESCAPES) + "\n\n" + "\n".join(paragraphs) + "\n\n"
    return RawDocument(source, doc_id, body.encode("utf-8"), "wiki", offset)


# ---------------------------------------------------------------------------------------------
# Wikitext -> text


@dataclass(frozen=True)
class _WikiExtractor:
    extractor: type  # wikiextractor.extract.Extractor
    revision_clock: type  # its MagicWords, reading the revision's timestamp (below)
    ignored_tags: tuple  # WikiExtractor's command line, without --links: its default ignored tags plus <a>


@functools.cache
def _wikiextractor() -> _WikiExtractor:
    """WikiExtractor, loaded on first use: it is an optional extra (AGPL-3.0; this project is Apache-2.0)."""
    try:
        from wikiextractor.extract import Extractor, MagicWords, ignoredTags, ignoreTag
    except ModuleNotFoundError as e:  # a usage error (exit 2): this installation cannot read the format asked for
        raise UsageError(
            "--format wikidump needs WikiExtractor 3.1.0, an optional extra (AGPL-3.0): pip install 'spanbert[wikidump]'"
        ) from e

    class RevisionClock(MagicWords):
        """{{CURRENTYEAR}} and the like read the revision's timestamp, not the wall clock, so the text
        of a page does not depend on the day it was processed (Extractor.clean_text sets them from
        time.strftime on every call)."""

        def __init__(self, timestamp: str) -> None:
            super().__init__()
            date, _, clock = timestamp.rstrip("Z").partition("T")
            year, month, day = ([*date.split("-"), "", "", ""])[:3]
            self.fixed = {"currentyear": year, "currentmonth": month, "currentday": day,
                          "currenthour": clock[:2], "currenttime": clock}

        def __setitem__(self, name: str, value: str) -> None:
            super().__setitem__(name, self.fixed.get(name, value))

    return _WikiExtractor(Extractor, RevisionClock, tuple(ignoreTag(tag) for tag in (*ignoredTags, "a")))


def extract_text(page_id: str, revid: str, title: str, wikitext: str, timestamp: str = "") -> list[str]:
    """WikiExtractor 3.1.0's text of one page: its paragraphs, as `python -m wikiextractor.WikiExtractor
    --no-templates` writes them.

    Called as that command line calls it (WikiExtractor.extract_process): a fresh Extractor per page,
    every setting passed explicitly (3.1.0 keeps no module-level state that extraction writes), the
    page's text still XML-escaped as the dump stores it (the command line reads the raw XML lines;
    Extractor unescapes it itself, after link and template handling), templates expanded against an
    empty template set (the command line's template pre-pass reads the whole dump first, which a
    range of it cannot; unknown templates expand to nothing, parser functions still run), `<doc>`
    text HTML-escaped (html_safe), which `clean_document` decodes as it does for that format.
    """
    wx = _wikiextractor()
    escaped_title = escape(title, _DUMP_ESCAPES)
    extractor = wx.extractor(page_id, revid, "", escaped_title, [], templates={}, redirects={},
                             ignored_tag_patterns=list(wx.ignored_tags), keepLinks=False, HtmlFormatting=False)
    extractor.magicWords = wx.revision_clock(timestamp)
    return extractor.clean_text(escape(wikitext, _DUMP_ESCAPES), html_safe=True)


# ---------------------------------------------------------------------------------------------
# Writing the multistream layout (tests, benches; also makes a single-stream dump splittable)

_PAGE_OPEN = b"  <page>\n"
_PAGE_CLOSE = b"  </page>\n"
_PAGE_ID = re.compile(rb"<id>(\d+)</id>")
_PAGE_TITLE = re.compile(rb"<title>(.*?)</title>")


def multistream(xml: bytes, pages_per_stream: int = 100) -> tuple[bytes, bytes]:
    """(dump, index) in Wikimedia's multistream layout from an uncompressed `pages-articles` XML: the
    header up to the first page as one bz2 stream, then `pages_per_stream` pages per stream, then the
    footer; the index has one `offset:page_id:title` line per page (MediaWiki's dump writer puts each
    `<page>` and `</page>` on a line of its own, two spaces in)."""
    import html

    first, last = xml.find(_PAGE_OPEN), xml.rfind(_PAGE_CLOSE)
    if first < 0 or last < 0:
        raise ValueError("no <page> in this XML")
    last += len(_PAGE_CLOSE)
    pages = [_PAGE_OPEN + p for p in xml[first + len(_PAGE_OPEN) : last].split(_PAGE_OPEN)]
    out, index = [bz2.compress(xml[:first])], []
    offset = len(out[0])
    for i in range(0, len(pages), pages_per_stream):
        group = pages[i : i + pages_per_stream]
        for page in group:
            page_id, title = _PAGE_ID.search(page), _PAGE_TITLE.search(page)
            name = html.unescape(title.group(1).decode("utf-8")) if title else ""
            index.append(f"{offset}:{page_id.group(1).decode() if page_id else ''}:{name}\n")
        out.append(bz2.compress(b"".join(group)))
        offset += len(out[-1])
    out.append(bz2.compress(xml[last:]))
    return b"".join(out), bz2.compress("".join(index).encode("utf-8"))
