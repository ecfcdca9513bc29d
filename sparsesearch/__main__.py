"""``python -m sparsesearch``: the ``sparsesearch`` command."""

import sys

from sparsesearch.cli import main

if __name__ == "__main__":
    sys.exit(main())
