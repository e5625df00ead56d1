"""How bytes become text: the pipeline's decoding rule, shared with every tool that reads raw text.

UTF-8 or nothing: bytes that are not UTF-8 are rejected with the reason `invalid_utf8` and the offending
byte named, unless a fallback codec is asked for (`--encoding-fallback latin-1`), which then decodes
them (undecodable bytes replaced) and says so. Never a silent guess.
"""

from __future__ import annotations

from dataclasses import dataclass

INVALID_UTF8 = "invalid_utf8"  # the rejection reason (dead-letter files, manifests, masking.stats)


@dataclass(frozen=True)
class Decoded:
    text: str | None  # None: rejected (not UTF-8 and no fallback)
    detail: str = ""  # where UTF-8 failed, when it did
    fell_back: bool = False  # decoded with the fallback codec

    @property
    def reason(self) -> str | None:
        """The rejection reason, None when there is text."""
        return INVALID_UTF8 if self.text is None else None


def decode(data: bytes, fallback: str | None = None) -> Decoded:
    try:
        return Decoded(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        detail = f"invalid UTF-8 at byte {e.start}: {data[e.start : e.start + 4]!r}"
        if fallback is None:
            return Decoded(None, detail)
        return Decoded(data.decode(fallback, errors="replace"), detail, fell_back=True)
