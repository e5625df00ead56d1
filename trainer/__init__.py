"""The lean SpanBERT trainer: model (model.py), data stream (the data/ package: shards, batch plan, NSP
pairs, collation, stream), per-objective metrics (metrics.py), checkpoints (checkpoint.py), loop (train.py),
typed configs (config.py, configs/*.json), evaluation (evaluate.py), export (export.py, hf.py) and the
ablation grid (ablate.py). Entry point: `python -m trainer`."""
