"""Where the embedded event log keeps its files: the events journal and the files beside it.

The B2BUA and the pipeline meet only in the log and the contracts: the B2BUA appends events and
follows the commands and balances journals, the embedded pipeline follows the events and writes
commands, account balances, alerts, dead letters and its checkpoint; call analysis adds the B2BUA's
signalling records and the pipeline's position in them. Both find those files here, and neither imports
the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sipledger.config import Config

from .publisher import file_url_path


@dataclass(frozen=True, slots=True)
class EmbeddedPaths:
    events: Path
    commands: Path
    alerts: Path
    dead_letter: Path
    webhook_dead_letter: Path
    checkpoint: Path
    # account.balance records for the nodes (pipeline -> B2BUA), and the latest of each account with
    # the journal offset it is current to (a starting node reads that, then follows the journal).
    balances: Path
    balances_snapshot: Path
    # Call analysis: the B2BUA's signalling records (sipledger trace), and how far the pipeline stored them.
    signalling: Path
    signalling_checkpoint: Path

    @classmethod
    def from_config(cls, cfg: Config) -> EmbeddedPaths:
        if not cfg.events.log.startswith("file:"):
            raise ValueError(f"embedded mode needs events.log = file:///..., not {cfg.events.log!r}")
        events = file_url_path(cfg.events.log, cfg.base_dir).resolve()
        d = events.parent
        return cls(events, d / "commands.jsonl", d / "alerts.jsonl", d / "dead-letter.jsonl",
                   d / "webhook-dead-letter.jsonl", d / "pipeline-checkpoint.json", d / "balances.jsonl",
                   d / "balances.json", d / "call-signalling.jsonl", d / "call-signalling-checkpoint.json")

    def closed_calls(self, gen: int) -> Path:
        """The embedded pipeline's closed-call memory, generation ``gen``."""
        return self.checkpoint.parent / f"pipeline-closed-calls.{gen}.bin"
