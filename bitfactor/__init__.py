"""bitfactor: turn a pretrained network into a factorized-binary one and serve it.

This package holds what the whole product shares: the version, the settings
(:mod:`bitfactor.settings`) and the ``bitfactor`` command line (:mod:`bitfactor.cli`).
It imports nothing heavy at import time: torch is loaded only by the commands that train.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bitfactor")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
