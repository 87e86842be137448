"""``sipledger b2bua``: run the SIP B2BUA in the foreground.

Takes ``--config``/``--set`` itself rather than ``sipledger.cli.with_config``: this module is
imported by ``sipledger.cli`` to register the command, so importing back would be circular.
"""

from __future__ import annotations

import errno
from pathlib import Path

import click

from sipledger import config as config_mod
from sipledger import logsetup
from sipledger.config import ConfigError

DEFAULT_CONFIG = "sipledger.toml"


@click.command("b2bua")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help=f"TOML configuration (default: ./{DEFAULT_CONFIG} when present)")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override one configuration key (repeatable)")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def b2bua_command(config_path: str | None, overrides: tuple[str, ...], log_level: str) -> None:
    """Run the SIP B2BUA (UDP/TCP on sip.listen_host:listen_port) until SIGTERM/SIGINT."""
    if config_path is None and Path(DEFAULT_CONFIG).is_file():
        config_path = DEFAULT_CONFIG
    try:
        cfg = config_mod.load(config_path, overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    logsetup.configure(log_level)
    from b2bua.server import run

    try:
        run(cfg)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise click.ClickException(
                f"cannot listen on {cfg.sip.listen_host}:{cfg.sip.listen_port}: {exc.strerror or exc}"
            ) from None
        raise
