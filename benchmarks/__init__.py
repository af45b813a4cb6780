"""asv benchmarks of gradsmooth (run from the repository root: ``asv run --python=same``)."""
