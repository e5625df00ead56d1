"""Downstream fine-tuning: SQuAD 1.1 / 2.0 extractive QA on top of a pre-trained encoder (docs/finetune.md).

Data flows pipeline -> masking -> trainer -> finetune: this package imports the trainer's encoder, its
checkpoints and HF interop, never the other way round.
"""
