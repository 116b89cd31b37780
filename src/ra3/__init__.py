"""ra3: RA3 mid-training (Reasoning as Action Abstractions) for code language models, end to end.

Components (imported by stages, never importing them): config, files, sandbox, benchmarks.
Stages (one `run(cfg) -> Path` each, composed only through `run`): evaluate, demo.
"""

__version__ = "0.1.0"
