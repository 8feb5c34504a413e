"""``python -m mbdlprune.cli``: the same command line as the ``mbdlprune`` script."""

from . import main

main()
