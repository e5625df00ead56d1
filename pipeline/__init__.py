"""Beam preprocessing: raw corpora -> Arrow shards with word boundaries and spaCy spans.

Importing this package is cheap: Beam and spaCy are imported only by the modules that need them.
The shard contract it writes with (schema, tokenizer, block builder, span aligner) lives in `contract`.
"""

import logging as _logging


class _NoGcpExtrasWarning(_logging.Filter):
    """Beam's bigquery client module logs "apitools not found ..." on the root logger when Beam is imported
    without the [gcp] extra, which this project never uses; drop exactly that record, nothing else."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith("apitools not found"))


# Here, before any pipeline module imports Beam (Beam's worker processes import this package first, too).
_logging.getLogger().addFilter(_NoGcpExtrasWarning())
