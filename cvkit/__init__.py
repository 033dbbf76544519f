"""cvkit: train, check and use image classifiers from the command line.

Importing cvkit is cheap: it does not import torch.
"""

from cvkit.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["hookimpl", "__version__"]
