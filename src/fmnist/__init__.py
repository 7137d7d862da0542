"""Fashion-MNIST in PyTorch as a reproducible DVC pipeline.

`fmnist.pipeline` is the library the DVC stages import; `fmnist.tools` holds the commands around
the pipeline (predict, reports, the plots page, the remote, sweeps, benchmarks). Tools import the
pipeline, never the other way round, so that editing a tool re-runs no stage.
"""
