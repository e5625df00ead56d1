"""Masking for SpanBERT and the paper's Table 6 ablations. Pure numpy: never imports torch.

    masker = Masker(MaskingConfig(scheme="geometric"), vocab_size=..., mask_id=..., special_ids=...)
    mb = masker.mask_block(Block(input_ids, word_start, block_index=i), epoch=e)

See docs/masking.md for the algorithm and every deviation from the paper's reference code.
"""

from masking.block import Block
from masking.config import SCHEMES, MaskingConfig, Scheme
from masking.masker import MaskedBatch, MaskedBlock, Masker
from masking.replace import KEEP, MASK, RANDOM
from masking.sampler import SampledLengths, span_length_pmf

__all__ = [
    "KEEP",
    "MASK",
    "RANDOM",
    "SCHEMES",
    "Block",
    "MaskedBatch",
    "MaskedBlock",
    "Masker",
    "MaskingConfig",
    "SampledLengths",
    "Scheme",
    "span_length_pmf",
]
