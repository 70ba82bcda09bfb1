"""Stage adapters: config → the module that owns the work → files in the run folder.

One module per chapter (``data``: synth, clips, tag, motion; ``adapt``: base, pretrain, head-only;
``evaluate``: embed, probe, plots, compare; ``segment``: segment, factorize; ``surgery``: surgery,
surgery-head), ``encoders`` for which model a stage starts from,
``arms`` for the list of arms, and ``graph`` for who needs whom. Nothing here does maths.
"""

from vjepa_adapt.stages.data import synth_command
from vjepa_adapt.stages.graph import build_graph, run_command

__all__ = ["build_graph", "run_command", "synth_command"]
