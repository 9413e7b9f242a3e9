"""The registry's exceptions. One tree, so callers catch what they can act on:

```
RegistryError
├── RegistryUnavailable   the registry cannot be reached (names the URI)
├── NotRegistered         unknown route, alias or version (says which, lists what exists)
└── InvalidModel          a model file is missing or is not GGUF
```

The router maps these to readiness and HTTP errors at its edge; the CLI prints their
message on one line and exits 2.
"""

from __future__ import annotations

__all__ = ["InvalidModel", "NotRegistered", "RegistryError", "RegistryUnavailable"]


class RegistryError(Exception):
    """Base class of every error the registry package raises on purpose."""


class RegistryUnavailable(RegistryError):
    """The tracking/registry server or database could not be reached or answered wrongly."""

    def __init__(self, uri: str, detail: str) -> None:
        self.uri = uri
        self.detail = detail
        super().__init__(f"MLflow registry at {uri} is unreachable: {detail}")


class NotRegistered(RegistryError):
    """A route (registered model), alias or version that the registry does not hold."""


class InvalidModel(RegistryError):
    """A model file that cannot be registered: missing, unreadable, or not GGUF."""
