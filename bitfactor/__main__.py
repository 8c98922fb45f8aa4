"""``python -m bitfactor``: the same as the ``bitfactor`` console script."""

from bitfactor.cli import main

main()
