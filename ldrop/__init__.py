"""ldrop: input-conditioned layer dropping for speech foundation models."""

# The run-time entry points, imported on first use so that `import ldrop.<sub>` stays light.
_RUNTIME_EXPORTS = ("AdaptiveModel", "load_model")


def __getattr__(name: str):
    if name in _RUNTIME_EXPORTS:
        import ldrop.runtime

        return getattr(ldrop.runtime, name)
    raise AttributeError(f"module 'ldrop' has no attribute {name!r}")
