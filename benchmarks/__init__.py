"""Measurement scripts: figures, never tests (speed targets live in their output).

Every script runs from the repository root as a module, `python -m benchmarks.<name>`, so that
`benchmarks` and `tests` (whose `tests.servers` some of them use) import without touching sys.path;
`atlas_core`, `orchestrator` and `workers` are installed with rodin.

    python -m benchmarks.train_step        training-step speed against a plain AtlasNet
    python -m benchmarks.queue_throughput  queue dispatch latency, throughput, `rodin status`
    python -m benchmarks.swords            procedural sword generation and ingestion
    python -m benchmarks.small_data        the small-data study: --pretrain, refinement, retrieval, OOD
    python -m benchmarks.refine            test-time refinement and the OOD rates, per method
"""
