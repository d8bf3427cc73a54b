"""Task-free data streams with hidden ground truth, for online-mas experiments.

A learner iterates a :class:`Stream` of batches and never sees task boundaries; the truth (which
segment each batch came from, where the changes were, one held-out set per segment) is kept in
``stream.truth`` for evaluation only.

Examples
--------
>>> from streams import make_stream
>>> stream = make_stream("rotated-digits", n_segments=3, passes=2, seed=0)
>>> for x, y in stream:
...     pass
>>> len(stream), stream.change_points, len(stream.eval_sets)
(270, [90, 180], 3)
"""

from __future__ import annotations

from streams.registry import STREAM_NAMES, StreamConfig, build_stream, make_stream
from streams.scenarios import (
    Segment,
    class_splits,
    corruptions,
    dataset_segments,
    label_shift,
    permutations,
    rotations,
)
from streams.sources import (
    DatasetPool,
    Pool,
    Source,
    SubsetPool,
    TensorPool,
    dataset_source,
    digits_source,
    mnist1d_source,
    stratified_split,
    tensor_source,
    validation_source,
)
from streams.stream import Batch, Stream
from streams.torchvision_sources import (
    TORCHVISION_NAMES,
    expected_files,
    load_array_pickle,
    torchvision_source,
)
from streams.transforms import CORRUPTIONS, MAX_SEVERITY, Corrupt, Permute, Rotate, Transform
from streams.transitions import (
    TRANSITIONS,
    Schedule,
    make_schedule,
    recurring_order,
    segment_lengths,
)
from streams.truth import EvalSets, GroundTruth

__all__ = [
    "CORRUPTIONS",
    "MAX_SEVERITY",
    "STREAM_NAMES",
    "TORCHVISION_NAMES",
    "TRANSITIONS",
    "Batch",
    "Corrupt",
    "DatasetPool",
    "EvalSets",
    "GroundTruth",
    "Permute",
    "Pool",
    "Rotate",
    "Schedule",
    "Segment",
    "Source",
    "Stream",
    "StreamConfig",
    "SubsetPool",
    "TensorPool",
    "Transform",
    "build_stream",
    "class_splits",
    "corruptions",
    "dataset_segments",
    "dataset_source",
    "digits_source",
    "expected_files",
    "label_shift",
    "load_array_pickle",
    "make_schedule",
    "make_stream",
    "mnist1d_source",
    "permutations",
    "recurring_order",
    "rotations",
    "segment_lengths",
    "stratified_split",
    "tensor_source",
    "torchvision_source",
    "validation_source",
]
