"""``python -m autocompress.cli``: the same command line as the ``autocompress`` script."""

from autocompress.cli import main

main()
