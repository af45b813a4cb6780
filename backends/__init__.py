"""Framework adapters for gradsmooth (installed as ``gradsmooth.backends``).

Each adapter lives in its own module and imports its framework only when that module
is imported: ``gradsmooth.backends.torch``, ``gradsmooth.backends.mlx``.
"""

__all__: list[str] = []
