"""Where call events go and come from: the file journal (embedded) or Kafka behind a disk spool."""

from .journal import FileJournal, read_journal
from .publisher import Publisher, open_publisher

__all__ = ["FileJournal", "Publisher", "open_publisher", "read_journal"]
