"""The sequence-parallel core: torch only, no transformers, trainers or datasets.

XTuner-style names for users who wire SP into their own loops:
`init_sequence_parallel`, `SequenceParallelSampler`, `pad_for_sequence_parallel`,
`split_for_sequence_parallel`, `reduce_sequence_parallel_loss`; `ulysses_pro.apply_sequence_parallel`
applies SP attention to a loaded Hugging Face model.
"""

from .hybrid import sequence_parallel_attention
from .mesh import SequenceParallelLayout, destroy_sequence_parallel, init_sequence_parallel
from .reduce import reduce_sequence_parallel_loss
from .sampler import SequenceParallelSampler
from .sharding import SequenceParallelCollator, pad_for_sequence_parallel, split_for_sequence_parallel

__all__ = [
    "SequenceParallelCollator",
    "SequenceParallelLayout",
    "SequenceParallelSampler",
    "destroy_sequence_parallel",
    "init_sequence_parallel",
    "pad_for_sequence_parallel",
    "reduce_sequence_parallel_loss",
    "sequence_parallel_attention",
    "split_for_sequence_parallel",
]
