"""CDR stores: ClickHouse servers over the native protocol, or chDB in process, behind one API."""

from .base import Store, StoreError, StoreHandle, StoreLockedError, open_store
from .migrate import migrate

__all__ = ["Store", "StoreError", "StoreHandle", "StoreLockedError", "migrate", "open_store"]
