"""`make demo`: real Wikipedia text -> vocabulary -> shards -> tiny SpanBERT -> HF export and report."""
