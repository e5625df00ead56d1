"""Documents before tokenisation: framing raw bytes into documents, decoding, cleaning.

Everything here is plain Python on byte streams and strings (no Beam), so the Beam readers, the
vocabulary trainer and the tests share one implementation.

Framing (`frame_*`) only finds document boundaries in a binary stream and yields `RawDocument`s
holding undecoded bytes: a bad byte must reject one document, never kill a reader.
`clean_document` then decodes (`contract.text`: the rule every text reader shares), parses and cleans
one `RawDocument` into a `Document` or a `Rejection` (the dead-letter record).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from contract.annotate import Annotation
from contract.text import INVALID_UTF8, decode
from pipeline.counters import Counter

FORMATS = ("wikiextractor", "text", "jsonl", "wikidump")


@dataclass(frozen=True)
class RawDocument:
    source: str  # input file, relative to its glob's directory (stable across machines)
    doc_id: str  # "<source>#<id>"; for JSON kinds provisional until the line is parsed
    data: bytes
    kind: str  # "wiki" (WikiExtractor <doc> body), "json" (one JSON object), "text" (a whole file)
    offset: int = 0  # byte offset of the document in its file (for dead-letter details)
    # Set for a whole file that framed into no document (`unframed_file`): the cleaner rejects it as is.
    problem: Rejection | None = None


@dataclass
class Document:
    source: str
    doc_id: str
    text: str
    flags: dict[str, int] = field(default_factory=dict)  # cleaning events, summed into the manifest
    annotation: Annotation | None = None


@dataclass(frozen=True)
class Rejection:
    """One dead-letter line."""

    source: str
    doc_id: str
    reason: str
    detail: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {"source": self.source, "doc_id": self.doc_id, "reason": self.reason, "detail": self.detail},
            ensure_ascii=False,
            sort_keys=True,
        )


@dataclass(frozen=True)
class CleanOptions:
    encoding_fallback: str | None = None  # e.g. "latin-1": decode instead of rejecting bad UTF-8
    text_field: str = "text"
    id_field: str = "id"
    strip_markup: bool = True
    strip_gutenberg: bool = True


# ---------------------------------------------------------------------------------------------
# Framing: byte stream -> RawDocument. `start`/`end` select the documents that *begin* in
# [start, end), so a file cut into byte ranges yields every document exactly once (the usual
# text-source rule: a range skips the partial record at its start and finishes the one it began).

_DOC_OPEN = re.compile(rb"^<doc\b([^>]*)>")
_ATTR = re.compile(rb'(\w+)="([^"]*)"')


# A line ends at "\n", "\r\n" or a lone "\r" (old Mac files): all three frame documents identically.
_AFTER_LONE_CR = re.compile(rb"(?<=\r)(?!\n)")


def _split_cr(line: bytes) -> list[bytes]:
    """A "\n"-terminated line cut after every lone "\r" (readline only knows "\n")."""
    return _AFTER_LONE_CR.split(line) if b"\r" in line else [line]


def _lines_from(stream: BinaryIO, start: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line) for every line that begins at or after `start`; "\n", "\r\n" and "\r" end lines."""
    pos = 0
    pending: list[bytes] = []
    if start > 0:
        stream.seek(start - 1)
        pos = start - 1
        # The line that straddles `start` (or just its terminator) belongs to the previous range.
        partial, *pending = _split_cr(stream.readline())
        pos += len(partial)
    while True:
        for line in pending:
            if line:
                yield pos, line
                pos += len(line)
        raw = stream.readline()
        if not raw:
            return
        pending = _split_cr(raw)


def frame_wikiextractor(
    stream: BinaryIO, source: str, start: int = 0, end: int | None = None
) -> Iterator[RawDocument]:
    """WikiExtractor output: `<doc id=.. url=.. title=..>` … `</doc>` blocks, or its `--json` lines.

    The variant is decided once per file from its first non-blank line, so a range that starts
    inside an article never mistakes a body line that begins with "{" for a JSON document.
    """
    json_lines: bool | None = None
    if start > 0:  # ranges after the first are only planned for seekable (uncompressed) files
        stream.seek(0)
        json_lines = stream.read(4096).lstrip().startswith(b"{")
    body: list[bytes] | None = None
    doc_id, doc_offset = "", 0
    for pos, line in _lines_from(stream, start):
        if json_lines is None and line.strip():
            json_lines = line.lstrip().startswith(b"{")
        if json_lines:
            if end is not None and pos >= end:
                return
            if line.strip():
                yield RawDocument(source, f"{source}#@{pos}", line, "json", pos)
        elif body is None:
            if end is not None and pos >= end:
                return
            m = _DOC_OPEN.match(line)
            if m:
                attrs = {k.decode(): v.decode("utf-8", "replace") for k, v in _ATTR.findall(m.group(1))}
                doc_id = attrs.get("id") or attrs.get("title") or f"@{pos}"
                body, doc_offset = [line[m.end() :].lstrip(b"\r\n")], pos
            # Anything else between articles (blank lines, the tail of an article that began in
            # the previous range) is not a document of this range.
        elif line.rstrip() == b"</doc>":
            yield RawDocument(source, f"{source}#{doc_id}", b"".join(body), "wiki", doc_offset)
            body = None
        else:
            body.append(line)
    if body is not None:  # truncated file: keep the text, the cleaner flags it
        yield RawDocument(source, f"{source}#{doc_id}", b"".join(body), "wiki-unterminated", doc_offset)


def frame_jsonl(stream: BinaryIO, source: str, start: int = 0, end: int | None = None) -> Iterator[RawDocument]:
    """One JSON object per line; blank lines are skipped."""
    for pos, line in _lines_from(stream, start):
        if end is not None and pos >= end:
            return
        if line.strip():
            yield RawDocument(source, f"{source}#@{pos}", line, "json", pos)


def frame_text(stream: BinaryIO, source: str, start: int = 0, end: int | None = None) -> Iterator[RawDocument]:
    """One document per file (books). A file is one range, so `start` is always 0."""
    if start != 0:
        raise ValueError("text files are not splittable (one document per file)")
    yield RawDocument(source, source, stream.read(), "text", 0)


def frame_wikidump(stream: BinaryIO, source: str, start: int = 0, end: int | None = None) -> Iterator[object]:
    """Wikipedia's `pages-articles` XML dumps, still compressed: see pipeline.wikidump (imported here
    lazily, as it builds on this module's records)."""
    from pipeline.wikidump import frame_dump

    return frame_dump(stream, source, start, end)


FRAMERS = {"wikiextractor": frame_wikiextractor, "jsonl": frame_jsonl, "text": frame_text, "wikidump": frame_wikidump}
SPLITTABLE = {"wikiextractor": True, "jsonl": True, "text": False, "wikidump": False}  # dumps: wikidump.plan_dump
_SNIFF_BYTES = 4096
_WHOLE_FILE_CHECKED = ("wikiextractor", "jsonl", "text")


def frame_file(fmt: str, stream: BinaryIO, source: str, start: int = 0, end: int | None = None) -> Iterator[RawDocument]:
    """FRAMERS[fmt] over one range, and, when the file's first range frames no document at all, one
    RawDocument carrying a Rejection for the whole file (`unframed_file`): input that is not in its declared
    format is a counted dead letter, never silence."""
    found = False
    for raw in FRAMERS[fmt](stream, source, start, end):
        found = True
        yield raw
    # A dump's first range is its header stream, never a page: wikidump dead-letters its own bad streams.
    if not found and start == 0 and fmt in _WHOLE_FILE_CHECKED:
        stream.seek(0)
        yield unframed_file(fmt, source, stream.read(_SNIFF_BYTES))


def unframed_file(fmt: str, source: str, head: bytes) -> RawDocument:
    """The dead letter of a file that framed into no document, with the likely reason read off its first bytes."""
    if not head.strip():
        reason, detail = "empty_file", "no text"
    elif head[:2] in (b"\xff\xfe", b"\xfe\xff") or _alternating_nuls(head):
        reason, detail = "utf16", "UTF-16 text (a BOM or every other byte NUL); convert it to UTF-8"
    elif b"\x00" in head or not _utf8_prefix(head):
        reason, detail = "binary", "NUL bytes or invalid UTF-8 in the first bytes: not a text file"
    else:
        reason = f"no_{fmt}_docs"
        first = head.lstrip().split(b"\n", 1)[0][:60].decode("utf-8", "replace")
        detail = f"no {fmt} document in the file (it begins {first!r}); is --format / FORMAT: right?"
    rejection = Rejection(source, source, reason, detail)
    return RawDocument(source, source, b"", "file", 0, problem=rejection)


def _alternating_nuls(head: bytes) -> bool:
    even, odd = head[0::2].count(0), head[1::2].count(0)
    return max(even, odd) > len(head) // 4 and min(even, odd) < len(head) // 50


def _utf8_prefix(head: bytes) -> bool:
    """`head` is valid UTF-8 up to a character the sniffed prefix may have cut at its end."""
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return len(head) == _SNIFF_BYTES and e.start >= len(head) - 3 and e.reason == "unexpected end of data"
    return True


@dataclass(frozen=True)
class InputSpec:
    fmt: str
    pattern: str


_PREFIX = re.compile(r"^([A-Za-z][A-Za-z0-9_-]*):(?!//)")


def split_format(spec: str, default_format: str) -> tuple[str, str]:
    """'FORMAT:GLOB' -> (FORMAT, GLOB), a bare GLOB -> (default_format, GLOB). 'gs://…' is a URL, not a
    format; any other 'word:' prefix must be a known format (ValueError listing them), so a typo such as
    'wikidump:F.xml.bz2' is never taken for a file name."""
    m = _PREFIX.match(spec)
    if m is None or len(m.group(1)) == 1:  # one letter: a Windows drive ("C:")
        return default_format, spec
    if m.group(1) not in FORMATS:
        raise ValueError(f"--input {spec}: unknown format {m.group(1)!r}; known formats: {', '.join(FORMATS)}")
    return m.group(1), spec[m.end():]


# ---------------------------------------------------------------------------------------------
# Cleaning: RawDocument -> Document | Rejection.

# Tags such as <br>, </ref>, <span class="x">: WikiExtractor and web dumps leave some behind.
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>\n]{0,200})?/?>")
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_PG_START = re.compile(r"^\s*\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK.*$", re.I | re.M)
_PG_END = re.compile(r"^\s*\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK.*$", re.I | re.M)
_PG_END_LINE = re.compile(r"^\s*End of (?:the )?Project Gutenberg'?s? .*$", re.I | re.M)
_PG_PRODUCED = re.compile(r"\A\s*Produced by .*?(?:\n\s*\n|\Z)", re.S)


def strip_gutenberg(text: str) -> tuple[str, bool]:
    """Text between the Project Gutenberg START/END markers, without the credits and end line."""
    start, end = _PG_START.search(text), _PG_END.search(text)
    if start is None and end is None:
        return text, False
    body = text[start.end() if start else 0 : end.start() if end else len(text)]
    tail = _PG_END_LINE.search(body)
    if tail is not None:
        body = body[: tail.start()]
    body = _PG_PRODUCED.sub("", body, count=1)
    return body, True


def strip_markup(text: str) -> tuple[str, bool]:
    """Drop leftover HTML/XML tags and decode character entities (&amp; &#8212; …)."""
    out = _TAG.sub("", text)
    out = _ENTITY.sub(lambda m: html.unescape(m.group(0)), out)
    return out, out != text


def clean_document(raw: RawDocument, opts: CleanOptions) -> Document | Rejection:
    if raw.problem is not None:
        return raw.problem
    flags: dict[str, int] = {}
    decoded = decode(raw.data, opts.encoding_fallback)
    if decoded.text is None:
        return Rejection(raw.source, raw.doc_id, INVALID_UTF8, decoded.detail)
    if decoded.fell_back:
        flags[Counter.DECODED_WITH_FALLBACK] = 1
    text = decoded.text
    doc_id = raw.doc_id
    if raw.kind == "json":
        parsed = _parse_json(raw, text, opts)
        if isinstance(parsed, Rejection):
            return parsed
        doc_id, text = parsed
    if raw.kind == "wiki-unterminated":
        flags[Counter.UNTERMINATED_WIKI_DOC] = 1
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\x00" in text:
        text = text.replace("\x00", "")
        flags[Counter.NUL_BYTES_REMOVED] = 1
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        flags[Counter.LINE_ENDINGS_NORMALISED] = 1
    if raw.kind == "text" and opts.strip_gutenberg:
        text, stripped = strip_gutenberg(text)
        if stripped:
            flags[Counter.GUTENBERG_BOILERPLATE_STRIPPED] = 1
    if opts.strip_markup:
        text, changed = strip_markup(text)
        if changed:
            flags[Counter.MARKUP_REMOVED] = 1
    text = text.strip()
    if not text:
        return Rejection(raw.source, doc_id, "empty", "no text after cleaning")
    return Document(raw.source, doc_id, text, flags)


def _parse_json(raw: RawDocument, text: str, opts: CleanOptions) -> tuple[str, str] | Rejection:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return Rejection(raw.source, raw.doc_id, "invalid_json", str(e))
    if not isinstance(obj, dict) or not isinstance(obj.get(opts.text_field), str):
        return Rejection(raw.source, raw.doc_id, "missing_text_field", f"no string field {opts.text_field!r}")
    ident = obj.get(opts.id_field)
    doc_id = f"{raw.source}#{ident}" if ident not in (None, "") else raw.doc_id
    return doc_id, obj[opts.text_field]
