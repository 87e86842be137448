"""Run SIPp 3.6.x as a foreground subprocess and parse what it did.

Every run gets its own directory with:

* ``messages.log`` - ``-trace_msg -message_file``: every SIP message sent and received;
* ``errors.log``   - ``-trace_err -error_file``: unexpected messages and aborts;
* ``stat.csv``     - ``-trace_stat -stf``: the cumulative counters (successful / failed calls);
* ``screen.log``   - ``-trace_screen -screen_file``: the final screens (fallback for the counters);
* ``logs.log``     - ``-trace_logs -log_file``: ``<log>`` actions of the scenarios (e.g. recorded status);
* ``stdout.txt`` / ``stderr.txt``.

SIPp exit codes: 0 all calls succeeded, 1 at least one call failed, 97 exit on internal command,
99 normal exit without calls processed, 255 fatal error (bad scenario, port in use, ...) and also
-timeout reached with -timeout_error.

Scenario keys: every ``[name]`` keyword used by a scenario must be given with ``-key name value``
or SIPp refuses to start ("Unsupported keyword"). Each scenario in ``tests/sipp`` documents its
keys in its header comment as lines ``-key NAME DEFAULT  description``; `SippProcess` passes those
defaults unless the caller overrides them, so a test only names what it changes.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from types import TracebackType

from sipledger.ports import free_port

SCENARIO_DIR = Path(__file__).resolve().parents[1] / "sipp"
SIPP_BINARY = os.environ.get("SIPP_BINARY", shutil.which("sipp") or "/usr/bin/sipp")

# RFC 3261 compact header forms (and RFC 4028 "x" for Session-Expires).
_COMPACT = {
    "i": "call-id",
    "f": "from",
    "t": "to",
    "v": "via",
    "m": "contact",
    "l": "content-length",
    "c": "content-type",
    "k": "supported",
    "e": "content-encoding",
    "s": "subject",
    "x": "session-expires",
}

_SEPARATOR = re.compile(r"^-{20,}(?:\s+(?P<ts>\d{4}-\d{2}-\d{2}\s+\d{2}:\d{2}:\d{2}(?:\.\d+)?))?\s*$")
_UNEXPECTED = re.compile(r"^Unexpected (?P<transport>[A-Za-z0-9]+) message received", re.IGNORECASE)
_DIRECTION = re.compile(
    r"^(?P<transport>[A-Za-z0-9]+) message (?P<dir>sent|received)\b.*?(?P<size>\d+)\]?\)? ?bytes",
    re.IGNORECASE,
)
_KEY_DOC = re.compile(r"^\s*-key\s+(?P<name>[A-Za-z0-9_.-]+)\s+(?P<default>\S+)")


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on `host` right now (SIPp binds the UDP one)."""
    return free_port(host, udp_and_tcp=True)


def scenario_path(name: str | os.PathLike[str]) -> Path:
    """Resolve `name` ("uac_basic_bye", "uac_basic_bye.xml" or a path) to a scenario file."""
    p = Path(name)
    if p.is_file():
        return p.resolve()
    candidate = SCENARIO_DIR / (p.name if p.suffix == ".xml" else f"{p.name}.xml")
    if not candidate.is_file():
        raise FileNotFoundError(f"no SIPp scenario {name!r} (looked in {SCENARIO_DIR})")
    return candidate


def scenario_default_keys(scenario: str | os.PathLike[str]) -> dict[str, str]:
    """The ``-key NAME DEFAULT`` lines documented in the scenario's leading XML comment."""
    text = scenario_path(scenario).read_text(encoding="utf-8", errors="replace")
    start = text.find("<!--")
    end = text.find("-->", start)
    if start < 0 or end < 0:
        return {}
    keys: dict[str, str] = {}
    for line in text[start + 4 : end].splitlines():
        m = _KEY_DOC.match(line)
        if m:
            keys[m.group("name")] = m.group("default")
    return keys


# --------------------------------------------------------------------------- trace parsing


@dataclass(frozen=True)
class TracedMessage:
    """One SIP message from SIPp's ``-message_file``."""

    direction: str  # "sent" or "received"
    timestamp: datetime | None
    transport: str
    first_line: str
    headers: tuple[tuple[str, str], ...]
    body: str
    raw: str
    index: int = 0
    retransmission: bool = False
    unexpected: bool = False  # SIPp logged it as "Unexpected ... message received"

    @property
    def is_request(self) -> bool:
        return not self.first_line.startswith("SIP/")

    @property
    def is_response(self) -> bool:
        return self.first_line.startswith("SIP/")

    @property
    def method(self) -> str | None:
        """Request method, or None for a response (see `cseq_method`)."""
        return self.first_line.split(" ", 1)[0].upper() if self.is_request else None

    @property
    def status(self) -> int | None:
        if not self.is_response:
            return None
        parts = self.first_line.split()
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None

    @property
    def reason(self) -> str | None:
        if not self.is_response:
            return None
        parts = self.first_line.split(" ", 2)
        return parts[2] if len(parts) > 2 else ""

    def header(self, name: str, default: str | None = None) -> str | None:
        """First value of header `name` (case-insensitive, compact forms understood)."""
        values = self.header_all(name)
        return values[0] if values else default

    def header_all(self, name: str) -> list[str]:
        want = _canonical(name)
        return [v for k, v in self.headers if _canonical(k) == want]

    def has_header(self, name: str) -> bool:
        return bool(self.header_all(name))

    @property
    def call_id(self) -> str | None:
        return self.header("Call-ID")

    @property
    def cseq(self) -> tuple[int, str] | None:
        value = self.header("CSeq")
        if not value:
            return None
        num, _, method = value.strip().partition(" ")
        try:
            return int(num), method.strip().upper()
        except ValueError:
            return None

    @property
    def cseq_method(self) -> str | None:
        c = self.cseq
        return c[1] if c else None

    def tag(self, header: str) -> str | None:
        """The ``tag`` parameter of From/To."""
        value = self.header(header)
        if not value:
            return None
        m = re.search(r";\s*tag=([^;>\s]+)", value)
        return m.group(1) if m else None

    def session_expires(self) -> tuple[int, str | None] | None:
        """(delta-seconds, refresher or None) from Session-Expires, or None when absent."""
        value = self.header("Session-Expires")
        if not value:
            return None
        m = re.match(r"\s*(\d+)", value)
        if not m:
            return None
        r = re.search(r"refresher\s*=\s*(\w+)", value, re.IGNORECASE)
        return int(m.group(1)), (r.group(1).lower() if r else None)

    def __str__(self) -> str:
        arrow = "->" if self.direction == "sent" else "<-"
        rt = " (retrans)" if self.retransmission else ""
        rt += " (UNEXPECTED)" if self.unexpected else ""
        return f"{arrow} {self.first_line}{rt}"


def _canonical(name: str) -> str:
    n = name.strip().lower()
    return _COMPACT.get(n, n)


def _split_sip_messages(blob: str) -> list[str]:
    """Split a block that may hold several SIP messages (stream transports) using Content-Length."""
    out: list[str] = []
    rest = blob.lstrip("\r\n")
    while rest.strip():
        sep = re.search(r"\r?\n\r?\n", rest)
        if not sep:
            out.append(rest)
            break
        head = rest[: sep.start()]
        m = re.search(r"^(?:content-length|l)\s*:\s*(\d+)", head, re.IGNORECASE | re.MULTILINE)
        length = int(m.group(1)) if m else None
        body_start = sep.end()
        if length is None:
            # No Content-Length: everything up to the next start line is the body.
            nxt = re.search(r"\r?\n(?=(?:SIP/2\.0 \d{3} |[A-Z]+ \S+ SIP/2\.0\r?\n))", rest[body_start:])
            end = body_start + (nxt.start() if nxt else len(rest) - body_start)
        else:
            end = body_start + length
        out.append(rest[:end])
        rest = rest[end:].lstrip("\r\n")
    return out


def _parse_one(text: str, direction: str, ts: datetime | None, transport: str, index: int) -> TracedMessage:
    norm = text.replace("\r\n", "\n")
    head, _, body = norm.partition("\n\n")
    lines = head.split("\n")
    first = lines[0].strip() if lines else ""
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line.strip():
            continue
        if line[0] in " \t" and headers:  # folded continuation line
            k, v = headers[-1]
            headers[-1] = (k, f"{v} {line.strip()}")
            continue
        name, sep, value = line.partition(":")
        if sep:
            headers.append((name.strip(), value.strip()))
    return TracedMessage(
        direction=direction,
        timestamp=ts,
        transport=transport,
        first_line=first,
        headers=tuple(headers),
        body=body.rstrip("\n"),
        raw=text,
        index=index,
    )


def parse_message_trace(text: str) -> list[TracedMessage]:
    """Parse SIPp's ``-trace_msg`` file.

    The format (SIPp 3.6.1) is, per message::

        ----------------------------------------------- 2026-11-25 10:09:56.661010
        UDP message sent (514 bytes):

        INVITE sip:... SIP/2.0
        ...

    and for received ones ``UDP message received [472] bytes :``. SIPp also repeats a received
    message it did not expect in a block without timestamp headed ``Unexpected UDP message
    received:``; that sets `unexpected` on the copy already parsed. Other lines are ignored.
    Messages that repeat a previous message of the same
    direction byte for byte are flagged `retransmission`.
    """
    messages: list[TracedMessage] = []
    seen: set[tuple[str, str]] = set()
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        m = _SEPARATOR.match(lines[i].rstrip("\r\n"))
        if not m:
            i += 1
            continue
        ts: datetime | None = None
        if m.group("ts"):
            with contextlib.suppress(ValueError):
                ts = datetime.fromisoformat(re.sub(r"\s+", " ", m.group("ts")))
        i += 1
        if i >= len(lines):
            break
        header_line = lines[i].strip()
        if _UNEXPECTED.match(header_line):
            # SIPp repeats a received message it did not expect in its own block: flag the
            # copy already parsed instead of listing it twice.
            i += 1
            chunk = []
            while i < len(lines) and not _SEPARATOR.match(lines[i].rstrip("\r\n")):
                chunk.append(lines[i])
                i += 1
            raw = "".join(chunk).strip("\r\n")
            for n in range(len(messages) - 1, -1, -1):
                if messages[n].direction == "received" and messages[n].raw == raw:
                    messages[n] = replace(messages[n], unexpected=True)
                    break
            continue
        d = _DIRECTION.match(header_line)
        if not d:
            continue
        direction = d.group("dir").lower()
        transport = d.group("transport").upper()
        i += 1
        chunk: list[str] = []
        while i < len(lines) and not _SEPARATOR.match(lines[i].rstrip("\r\n")):
            chunk.append(lines[i])
            i += 1
        blob = "".join(chunk).strip("\r\n")
        for raw in _split_sip_messages(blob):
            raw = raw.strip("\r\n")
            if not raw:
                continue
            msg = _parse_one(raw, direction, ts, transport, len(messages))
            key = (direction, raw)
            if key in seen:
                msg = replace(msg, retransmission=True)
            seen.add(key)
            messages.append(msg)
    return messages


# --------------------------------------------------------------------------- statistics


def _parse_stat_csv(text: str) -> dict[str, str]:
    rows = [r for r in text.splitlines() if r.strip()]
    if len(rows) < 2:
        return {}
    header = rows[0].split(";")
    last = rows[-1].split(";")
    return dict(zip(header, last, strict=False))


def _parse_screen_counter(text: str, label: str) -> int | None:
    """Cumulative value of e.g. 'Successful call' from the last statistics screen."""
    found: int | None = None
    for line in text.splitlines():
        if line.strip().startswith(label):
            cells = [c.strip() for c in line.split("|")]
            if len(cells) >= 3 and cells[2].isdigit():
                found = int(cells[2])
    return found


# --------------------------------------------------------------------------- result


@dataclass
class SippResult:
    """What one SIPp run did."""

    name: str
    command: list[str]
    returncode: int | None
    successful_calls: int | None
    failed_calls: int | None
    messages: list[TracedMessage]
    workdir: Path
    stdout: str = ""
    stderr: str = ""
    errors: str = ""
    logs: str = ""
    timed_out: bool = False
    stats: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Exit code 0, no failed call, not killed by the harness."""
        return self.returncode == 0 and not self.timed_out and not self.failed_calls

    def requests(
        self, method: str | None = None, direction: str | None = None, *, retransmissions: bool = False
    ) -> list[TracedMessage]:
        return [
            m
            for m in self._select(direction, retransmissions)
            if m.is_request and (method is None or m.method == method.upper())
        ]

    def responses(
        self,
        status: int | None = None,
        direction: str | None = None,
        *,
        method: str | None = None,
        retransmissions: bool = False,
    ) -> list[TracedMessage]:
        """Responses, optionally only `status` and/or only those answering `method` (CSeq)."""
        return [
            m
            for m in self._select(direction, retransmissions)
            if m.is_response
            and (status is None or m.status == status)
            and (method is None or m.cseq_method == method.upper())
        ]

    def first_line_sequence(
        self, direction: str | None = None, *, retransmissions: bool = False
    ) -> list[str]:
        """Short first lines in order: requests as their method ("INVITE"), responses as
        "<status> <CSeq method>" ("200 INVITE"), prefixed with "> " (sent) / "< " (received)
        unless `direction` selects one side."""
        out = []
        for m in self._select(direction, retransmissions):
            label = m.method if m.is_request else f"{m.status} {m.cseq_method}"
            out.append(label if direction else f"{'>' if m.direction == 'sent' else '<'} {label}")
        return out

    def _select(self, direction: str | None, retransmissions: bool) -> Iterator[TracedMessage]:
        for m in self.messages:
            if direction is not None and m.direction != direction:
                continue
            if m.retransmission and not retransmissions:
                continue
            yield m

    def log_lines(self) -> list[str]:
        """Lines written by the scenario's ``<log>`` actions."""
        return [ln for ln in self.logs.splitlines() if ln.strip()]

    def describe(self) -> str:
        """A multi-line summary for assertion messages."""
        flow = "\n".join(f"    {m}" for m in self.messages)
        parts = [
            f"[{self.name}] rc={self.returncode} ok={self.successful_calls} failed={self.failed_calls}"
            f" timed_out={self.timed_out}",
            f"  cmd: {' '.join(self.command)}",
            f"  flow:\n{flow}" if flow else "  flow: (no messages)",
        ]
        if self.errors.strip():
            parts.append("  errors.log:\n" + _indent(self.errors[-3000:]))
        if self.stderr.strip():
            parts.append("  stderr:\n" + _indent(self.stderr[-2000:]))
        return "\n".join(parts)


def _indent(text: str) -> str:
    return "\n".join(f"    {ln}" for ln in text.splitlines())


# --------------------------------------------------------------------------- process


class SippProcess:
    """One SIPp instance running a scenario from `tests/sipp` in the foreground (no ``-bg``).

    Caller side: give `remote` ("127.0.0.1:5060"). Carrier side: leave `remote` None, SIPp then
    only listens on `local_port`. Use as a context manager: the process is always killed on exit.
    """

    def __init__(
        self,
        scenario: str | os.PathLike[str],
        *,
        remote: str | None = None,
        local_port: int | None = None,
        local_ip: str = "127.0.0.1",
        calls: int = 1,
        rate: float | None = None,
        rate_period_ms: int | None = None,
        limit: int | None = None,
        pause_ms: int | None = None,
        service: str | None = None,
        keys: Mapping[str, object] | None = None,
        set_vars: Mapping[str, object] | None = None,
        transport: str = "u1",
        timeout_s: float | None = 60,
        timeout_error: bool = True,
        max_retrans: int | None = None,
        recv_timeout_ms: int | None = None,
        auth_user: str | None = None,
        auth_password: str | None = None,
        auth_uri: str | None = None,
        extra_args: Sequence[str] = (),
        workdir: str | os.PathLike[str] | None = None,
        name: str | None = None,
    ) -> None:
        self.scenario = scenario_path(scenario)
        self.name = name or self.scenario.stem
        self.remote = remote
        self.local_ip = local_ip
        self.local_port = local_port if local_port is not None else free_udp_port(local_ip)
        self.keys: dict[str, str] = scenario_default_keys(self.scenario)
        self.keys.update({k: str(v) for k, v in (keys or {}).items()})
        self.set_vars = {k: str(v) for k, v in (set_vars or {}).items()}
        self.calls = calls
        self.rate = rate
        self.rate_period_ms = rate_period_ms
        self.limit = limit
        self.pause_ms = pause_ms
        self.service = service
        self.transport = transport
        self.timeout_s = timeout_s
        self.timeout_error = timeout_error
        self.max_retrans = max_retrans
        self.recv_timeout_ms = recv_timeout_ms
        self.auth_user = auth_user
        self.auth_password = auth_password
        # SIPp's digest uri defaults to remote_ip:remote_port, which is not the Request-URI of the
        # scenarios' INVITEs (sip:[service]@[remote_ip]:[remote_port]); the B2BUA requires the two to
        # match (RFC 2617 3.2.2.5), so a caller with credentials names its Request-URI (-auth_uri).
        if auth_uri is None and auth_user is not None and remote and service:
            auth_uri = f"{service}@{remote}"
        self.auth_uri = auth_uri
        self.extra_args = list(extra_args)
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="sipp-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._proc: subprocess.Popen[bytes] | None = None
        self._stdout: io.BufferedWriter | None = None
        self._stderr: io.BufferedWriter | None = None
        self.result: SippResult | None = None

    # files -------------------------------------------------------------------------------
    def _file(self, suffix: str) -> Path:
        return self.workdir / f"{self.name}_{suffix}"

    @property
    def message_file(self) -> Path:
        return self._file("messages.log")

    @property
    def address(self) -> str:
        """host:port this SIPp listens on (what a B2BUA route or the peer SIPp should target)."""
        return f"{self.local_ip}:{self.local_port}"

    def command(self) -> list[str]:
        cmd = [SIPP_BINARY, "-sf", str(self.scenario)]
        if self.remote:
            cmd.append(self.remote)
        cmd += ["-i", self.local_ip, "-p", str(self.local_port), "-t", self.transport]
        cmd += ["-m", str(self.calls)]
        if self.rate is not None:
            cmd += ["-r", f"{self.rate:g}"]
        if self.rate_period_ms is not None:
            cmd += ["-rp", str(self.rate_period_ms)]
        if self.limit is not None:
            cmd += ["-l", str(self.limit)]
        if self.pause_ms is not None:
            cmd += ["-d", str(self.pause_ms)]
        if self.service is not None:
            cmd += ["-s", self.service]
        if self.auth_user is not None:
            cmd += ["-au", self.auth_user]
        if self.auth_password is not None:
            cmd += ["-ap", self.auth_password]
        if self.auth_uri is not None:
            cmd += ["-auth_uri", self.auth_uri]
        for k, v in self.keys.items():
            cmd += ["-key", k, v]
        for k, v in self.set_vars.items():
            cmd += ["-set", k, v]
        if self.timeout_s is not None:
            cmd += ["-timeout", f"{self.timeout_s:g}s"]
            if self.timeout_error:
                cmd.append("-timeout_error")
        if self.max_retrans is not None:
            cmd += ["-max_retrans", str(self.max_retrans)]
        if self.recv_timeout_ms is not None:
            cmd += ["-recv_timeout", str(self.recv_timeout_ms)]
        cmd += [
            "-nostdin",
            "-trace_msg", "-message_file", str(self.message_file),
            "-trace_err", "-error_file", str(self._file("errors.log")),
            "-trace_stat", "-stf", str(self._file("stat.csv")), "-fd", "3600",
            "-trace_screen", "-screen_file", str(self._file("screen.log")),
            "-trace_logs", "-log_file", str(self._file("logs.log")),
        ]  # fmt: skip
        return [*cmd, *self.extra_args]

    # lifecycle ---------------------------------------------------------------------------
    def start(self) -> SippProcess:
        if self._proc is not None:
            raise RuntimeError(f"{self.name} already started")
        for suffix in ("messages.log", "errors.log", "stat.csv", "screen.log", "logs.log"):
            self._file(suffix).unlink(missing_ok=True)
        self._stdout = open(self._file("stdout.txt"), "wb")  # noqa: SIM115 - closed in _close_files
        self._stderr = open(self._file("stderr.txt"), "wb")  # noqa: SIM115
        self._proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=self._stderr,
            cwd=self.workdir,
            start_new_session=True,
        )
        return self

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait_listening(self, timeout: float = 5.0) -> None:
        """Block until the UDP port is bound by SIPp (for carriers started before a caller)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self._collect(False).describe()}")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    s.bind((self.local_ip, self.local_port))
                except OSError:
                    return
            time.sleep(0.02)
        raise TimeoutError(f"{self.name} did not bind {self.address} within {timeout}s")

    def wait(self, timeout: float | None = None) -> SippResult:
        """Wait for SIPp to exit (default: its own -timeout plus a margin) and collect the result.

        If it is still running after `timeout`, it is killed and the result has `timed_out`.
        """
        if self._proc is None:
            raise RuntimeError(f"{self.name} not started")
        if timeout is None:
            timeout = (self.timeout_s or 60) + 10
        timed_out = False
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            self.stop()
        self.result = self._collect(timed_out)
        return self.result

    def stop(self, grace: float = 2.0) -> None:
        """SIGTERM (SIPp then writes its final stats), then SIGKILL after `grace` seconds."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self._close_files()
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=5)
        self._close_files()

    def _close_files(self) -> None:
        for f in (self._stdout, self._stderr):
            if f is not None and not f.closed:
                f.close()

    def _read(self, suffix: str) -> str:
        p = self._file(suffix)
        return p.read_text(encoding="utf-8", errors="replace") if p.exists() else ""

    def _collect(self, timed_out: bool) -> SippResult:
        if self._proc is None or self._proc.poll() is not None:
            self._close_files()
        stats = _parse_stat_csv(self._read("stat.csv"))
        screen = self._read("screen.log") or self._read("stdout.txt")

        def counter(csv_name: str, screen_label: str) -> int | None:
            value = stats.get(csv_name)
            if value is not None and value.strip().isdigit():
                return int(value)
            return _parse_screen_counter(screen, screen_label)

        return SippResult(
            name=self.name,
            command=self.command(),
            returncode=self._proc.returncode if self._proc is not None else None,
            successful_calls=counter("SuccessfulCall(C)", "Successful call"),
            failed_calls=counter("FailedCall(C)", "Failed call"),
            messages=parse_message_trace(self._read("messages.log")),
            workdir=self.workdir,
            stdout=self._read("stdout.txt"),
            stderr=self._read("stderr.txt"),
            errors=self._read("errors.log"),
            logs=self._read("logs.log"),
            timed_out=timed_out,
            stats=stats,
        )

    def __enter__(self) -> SippProcess:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __del__(self) -> None:  # last resort: never leave a SIPp behind
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(Exception):
                proc.kill()
