"""Scraping a Prometheus endpoint over HTTP in tests, read as Prometheus would."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(port: int, host: str = "127.0.0.1") -> Samples:
    """Sample name -> [(labels, value)] of every sample of ``http://host:port/metrics``."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def family_names(port: int, host: str = "127.0.0.1") -> set[str]:
    """The metric families ``http://host:port/metrics`` declares (HELP/TYPE), samples or not."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
        return {f.name for f in text_string_to_metric_families(resp.read().decode())}


def by(samples: Samples, name: str, label: str) -> dict[str, int]:
    """The non-zero samples of ``name`` by the value of ``label``."""
    return {labels[label]: int(v) for labels, v in samples.get(name, []) if v}


def one(samples: Samples, name: str) -> float:
    values = samples[name]
    assert len(values) == 1, values
    return values[0][1]


def total(samples: Samples, name: str) -> float:
    return sum(v for _, v in samples.get(name, []))
