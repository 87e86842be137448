"""``sipledger notebook run NAME``: execute one of notebooks/*.ipynb headless and print what it printed.

The notebooks take their parameters from the environment (``SIPLEDGER_STORE_URL``, ``SIPLEDGER_CONFIG``,
``SIPLEDGER_EVENTS_LOG``, ``SIPLEDGER_SELL_RATES``); this sets them for the kernel, runs every cell with
nbclient (an ipykernel ``python3`` kernel) and fails when a cell fails: the billing-accuracy notebook
asserts at its end, so an exit status of 1 is the audit's verdict, fit for cron or CI.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

SOURCE_ROOT = Path(__file__).resolve().parents[1]
# Where a NAME is looked for, in order: the working directory's notebooks/, then the source tree's.
SEARCH = ("notebooks",)


class NotebookError(Exception):
    """A notebook that cannot be found or started (not a failing cell: see ``NotebookRun.error``)."""


@dataclass(slots=True)
class NotebookRun:
    path: Path
    text: list[str]
    images: int
    error: str | None  # the failing cell's exception (ename: evalue) or None

    @property
    def ok(self) -> bool:
        return self.error is None


def find(name: str, cwd: Path | None = None) -> Path:
    """``name`` as a path to an .ipynb, or ``notebooks/<name>.ipynb`` here or in the source tree."""
    cwd = cwd or Path.cwd()
    given = Path(name)
    if given.suffix == ".ipynb" and given.is_file():
        return given.resolve()
    stem = given.name.removesuffix(".ipynb")
    for root in (cwd, SOURCE_ROOT):
        for folder in SEARCH:
            candidate = root / folder / f"{stem}.ipynb"
            if candidate.is_file():
                return candidate
    raise NotebookError(f"no notebook {name!r}: known are {', '.join(available(cwd)) or 'none'}")


def available(cwd: Path | None = None) -> list[str]:
    names: set[str] = set()
    for root in (cwd or Path.cwd(), SOURCE_ROOT):
        for folder in SEARCH:
            names.update(p.stem for p in (root / folder).glob("*.ipynb"))
    return sorted(names)


def absolute_store_url(url: str, base_dir: Path) -> str:
    """A relative chdb path made absolute against ``base_dir`` (the kernel may run elsewhere)."""
    parsed = urlparse(url)
    if parsed.scheme != "chdb":
        return url
    path = (parsed.netloc or "") + parsed.path
    return url if path.startswith("/") else f"chdb://{(base_dir / path).resolve()}"


def _outputs(nb: Any) -> tuple[list[str], int]:
    text: list[str] = []
    images = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            kind = out.get("output_type")
            if kind == "stream":
                text.append(out.get("text", ""))
            elif kind in ("execute_result", "display_data"):
                data = out.get("data", {})
                if "image/png" in data:
                    images += 1
                    text.append("[figure]\n")
                elif "text/plain" in data:
                    text.append(data["text/plain"] + "\n")
            elif kind == "error":
                text.append(f"{out.get('ename')}: {out.get('evalue')}\n")
    return text, images


def run(path: Path, env: Mapping[str, str], *, cwd: Path | None = None, timeout: float = 600,
        out: Path | None = None) -> NotebookRun:
    """Execute every cell of ``path`` with ``env`` set for the kernel; ``out``: write the executed
    notebook there (figures included). A failing cell stops the run; its error is in the result."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    cwd = cwd or Path.cwd()
    # The kernel is a child process: it inherits this environment. It must import sipledger from where
    # this command runs it, installed or not.
    saved = dict(os.environ)
    os.environ.update(env)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(SOURCE_ROOT), saved.get("PYTHONPATH")) if p)
    error: str | None = None
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(cwd)}})
        try:
            client.execute()
        except CellExecutionError as exc:
            error = f"{exc.ename}: {exc.evalue}"
        except Exception as exc:  # the kernel did not start, died, or timed out
            raise NotebookError(f"{path.name}: {type(exc).__name__}: {exc}") from None
    finally:
        os.environ.clear()
        os.environ.update(saved)
    if out is not None:
        nbformat.write(nb, out)
    text, images = _outputs(nb)
    return NotebookRun(path, text, images, error)
