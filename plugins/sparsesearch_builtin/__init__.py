"""sparsesearch's built-in strategies.

Each module here is a complete plugin, registered through an entry point of group
``sparsesearch`` in sparsesearch's own ``pyproject.toml`` exactly as a third party registers
theirs, and importing only sparsesearch's public API. Copy one to start your own.
"""
