"""Choose the event sink from a URL: ``file:///path`` (journal) or ``kafka://host:port[,host:port]``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from .journal import FileJournal


class Publisher(Protocol):
    def publish(self, event: dict[str, Any], broadcast: bool = False) -> None: ...
    def flush(self) -> Any: ...
    def close(self) -> None: ...


def file_url_path(url: str, base_dir: Path | None = None) -> Path:
    """``file:///abs`` or ``file://relative`` (to ``base_dir``) -> a Path."""
    parsed = urlparse(url)
    path = Path((parsed.netloc or "") + parsed.path)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path


def open_publisher(url: str, topic: str, spool_dir: str | Path, base_dir: Path | None = None) -> Publisher:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return FileJournal(file_url_path(url, base_dir))
    if parsed.scheme == "kafka":
        from .kafka_publisher import SpooledKafkaPublisher

        spool = Path(spool_dir)
        if not spool.is_absolute() and base_dir is not None:
            spool = base_dir / spool
        return SpooledKafkaPublisher(parsed.netloc, topic, str(spool))
    raise ValueError(f"events.log must be file:///path or kafka://host:port, not {url!r}")
