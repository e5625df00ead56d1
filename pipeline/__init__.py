"""Beam preprocessing: raw corpora -> Arrow shards with word boundaries and spaCy spans.

Importing this package is cheap: Beam and spaCy are imported only by the modules that need them,
so the trainer and `masking.stats` can use the tokenizer, aligner and block builder on their own.
"""
