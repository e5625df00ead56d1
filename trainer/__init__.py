"""The lean SpanBERT trainer: model (model.py), data stream (data.py), checkpoints (checkpoint.py),
loop (train.py), typed configs (config.py, configs/*.json). Entry point: `python -m trainer`."""
