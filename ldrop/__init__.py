"""ldrop: input-conditioned layer dropping for speech foundation models, on PyTorch Lightning."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ldrop")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
