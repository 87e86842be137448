"""Callee prefix -> ordered carrier gateways (longest prefix wins)."""

from __future__ import annotations

from dataclasses import dataclass

from sipledger.config import Config, Gateway


@dataclass(frozen=True, slots=True)
class RouteMatch:
    prefix: str
    gateways: tuple[Gateway, ...]


class RouteTable:
    def __init__(self, routes: dict[str, list[Gateway]], gateways: list[Gateway] | None = None) -> None:
        self._routes = routes
        self._lengths = sorted({len(p) for p in routes}, reverse=True)
        # Every routing gateway (the ones probed for health): the configured list, else those the
        # routes name.
        if gateways is None:
            gateways = list({g.name: g for gws in routes.values() for g in gws}.values())
        self.gateways: tuple[Gateway, ...] = tuple(gateways)

    @classmethod
    def from_config(cls, cfg: Config) -> RouteTable:
        by_name = {g.name: g for g in cfg.gateways}
        return cls({r.prefix: [by_name[n] for n in r.gateways] for r in cfg.routes}, list(cfg.gateways))

    def lookup(self, callee: str) -> RouteMatch | None:
        """The longest prefix of ``callee`` with gateways, or None (the caller gets 404)."""
        digits = callee.lstrip("+")
        for n in self._lengths:
            if n <= len(digits):
                gws = self._routes.get(digits[:n])
                if gws:
                    return RouteMatch(digits[:n], tuple(gws))
        return None


def should_fail_over(status: int | None) -> bool:
    """Try the next gateway after a timeout (None), 408 or any 5xx; other finals go to the caller."""
    return status is None or status == 408 or 500 <= status <= 599
