"""ldrop: input-conditioned layer dropping for speech foundation models, on PyTorch Lightning."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ldrop")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

# The run-time entry points, imported on first use so that `import ldrop.<sub>` stays light.
_RUNTIME_EXPORTS = ("AdaptiveModel", "load_model")


def __getattr__(name: str):
    if name in _RUNTIME_EXPORTS:
        import ldrop.runtime

        return getattr(ldrop.runtime, name)
    raise AttributeError(f"module 'ldrop' has no attribute {name!r}")
