"""Compaction: turn a channel-pruned (masked) model into a physically smaller one.

A channel strategy (``l1-filter``, or any plugin with ``granularity = "channel"``) masks whole
output channels: weight rows and biases become zero, but the tensors keep their size, so the
model is as large and as slow as before. :func:`compact` removes those channels for real: the
pruned output channels of each producer (Conv, Linear) and the matching input channels of every
consumer, through BatchNorm, activations, pooling, dropout, flatten → Linear (``channel × spatial``
columns), residual additions, concatenations, grouped and depthwise convolutions.

How it works (a ``torch.fx`` pass of our own; ``docs/compaction.md`` says why not Torch-Pruning),
one module a step:

1. ``trace``: trace a mask-free copy of the model with ``torch.fx`` and record each tensor's
   shape on ``example_input``.
2. ``ops`` + ``propagate``: **zero propagation**. Every node is handed to its handler in the op
   table (op kind → handler; :func:`register_op` adds one), which follows, channel by channel,
   which values are *structurally* zero (masked weight rows and biases, through ops that map
   zero to zero). Nothing depends on the data.
3. ``channels``: **channel classes**, union-find over ``(tensor, channel)`` slots tied by the
   same handlers; a residual addition ties its operands' channels into one class (a
   *dependency group*). A class is removed when every value a consumer reads from it is zero;
   classes reaching the output, the input, or an op not in the table are kept.
4. ``groups``: the dependency groups of the prunable layers and the exact cost of any
   allocation over them (:func:`dependency_graph`, for the budget planner).
5. ``surgery``: :func:`compact` slices a copy of the model (same class, same module names,
   smaller tensors) and re-applies the masks of what remains.
6. ``verify``: **equivalence, every time**: the compacted and the masked model run on the same
   inputs in eval mode; ``max |diff| <= atol * max(1, max |output|)`` or
   :class:`CompactionError` naming the first layer (and its group) that differs.

BatchNorm subtlety (``norms``): a masked filter's BatchNorm outputs its shift, not zero; the
engine's masking step masks that BatchNorm too (:func:`dependent_masks`), so the masked model
*is* the compacted model. Without it, :func:`compact` still never lies: those channels are kept
and reported.

Where a model cannot be compacted (``torch.fx`` cannot trace it, or every pruned channel is
blocked by an unsupported op), :func:`compact` warns, names the blocking layer and returns the
masked model unchanged with ``fallback=True``. It never crashes on a model it does not
understand; only a compacted model that computes something else raises.
"""

from __future__ import annotations

from sparsesearch.compact.errors import CompactionError, CompactionWarning
from sparsesearch.compact.groups import (
    GROUP_SCORES,
    ChannelGroup,
    DependencyGraph,
    dependency_graph,
    graph_of,
    group_scores,
)
from sparsesearch.compact.norms import dependent_masks, norm_after
from sparsesearch.compact.ops import register_op
from sparsesearch.compact.surgery import CompactResult, compact, compact_model

__all__ = [
    "CompactResult",
    "CompactionError",
    "CompactionWarning",
    "compact",
    "compact_model",
    "dependent_masks",
    "ChannelGroup",
    "DependencyGraph",
    "GROUP_SCORES",
    "dependency_graph",
    "graph_of",
    "group_scores",
    "norm_after",
    "register_op",
]
