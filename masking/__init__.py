"""Masking for SpanBERT and the paper's Table 6 ablations. Pure numpy: never imports torch."""
