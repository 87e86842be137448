"""The systems under test: sipledger's B2BUA, the Sippy B2BUA and Kamailio, each started on its own
port with the carrier (a SIPp UAS) behind it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from cps.env import HOST, ROOT
from cps.procs import PROCS
from cps.system import free_port, udp_bound


class B2BUA:
    name = ""
    group_cpu = False  # CPU counted over the whole process group (several worker processes)

    def __init__(self, workdir: Path, carrier_port: int) -> None:
        self.workdir = workdir
        self.carrier_port = carrier_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        PROCS.stop(self.proc, grace=3.0)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        time.sleep(0.5)
        self.start()

    def describe(self) -> str:
        raise NotImplementedError

    def step_started(self) -> None:
        """Called when a rate step starts (sipledger: the loop stall count starts anew)."""

    def step_finished(self) -> dict[str, float]:
        """What the B2BUA itself says about the step (sipledger: its longest loop stall, in ms)."""
        return {}

    def tail(self, n: int = 1500) -> str:
        parts = []
        for f in sorted(self.workdir.glob("*.out")) + sorted(self.workdir.glob("*.err")):
            with contextlib.suppress(OSError):
                text = f.read_text(errors="replace")[-n:].strip()
                if text:
                    parts.append(f"{f.name}: {text}")
        return "\n".join(parts)


_EXPERIMENT_LAUNCHER = """\
import gc, runpy, socket, sys
if "{gc}":
    gc.set_threshold(*[int(x) for x in "{gc}".split(",")])
if {rcvbuf}:
    import b2bua.transport as t
    _bind = t.Transports._bind
    async def bind(self, port):
        await _bind(self, port)
        if self._udp_sock is not None:
            self._udp_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, {rcvbuf})
    t.Transports._bind = bind
sys.argv[0] = "sipledger"
runpy.run_module("sipledger", run_name="__main__", alter_sys=True)
"""


class SipledgerB2BUA(B2BUA):
    name = "sipledger"

    def __init__(self, workdir: Path, carrier_port: int, profile: bool = False,
                 gc_threshold: str = "", rcvbuf: int = 0) -> None:
        super().__init__(workdir, carrier_port)
        self.profile = profile
        self.core = "not started"  # which core the process reported (compiled or pure Python)
        self.gc_threshold = gc_threshold
        self.rcvbuf = rcvbuf
        self.journal = workdir / "journal" / "events.jsonl"

    def _config(self) -> Path:
        cfg = self.workdir / "sipledger.toml"
        cfg.write_text(f"""\
[node]
id = "bench-node"

[sip]
listen_host = "{HOST}"
listen_port = 0
transports = ["udp"]

[events]
log = "file://{self.journal}"
spool_dir = "{self.workdir / 'spool'}"

[[accounts]]
name = "bench"
ips = ["{HOST}"]

[[gateways]]
name = "carrier"
host = "{HOST}"
port = {self.carrier_port}
probe = false

[[routes]]
prefix = ""
gateways = ["carrier"]
""")
        return cfg

    def start(self) -> None:
        self.starts += 1
        cfg = self._config()
        out = self.workdir / f"b2bua-{self.starts}.out"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                                         os.environ.get("PYTHONPATH")])))
        prof_file = self.workdir / f"profile-{self.starts}.prof"
        prof = ["-m", "cProfile", "-o", str(prof_file)] if self.profile else []
        argv = [sys.executable, *prof, "-m", "sipledger", "b2bua", "--config", str(cfg)]
        if self.gc_threshold or self.rcvbuf:  # experiments only: not how sipledger ships
            code = _EXPERIMENT_LAUNCHER.format(gc=self.gc_threshold, rcvbuf=self.rcvbuf)
            argv = [sys.executable, "-c", code, "b2bua", "--config", str(cfg)]
        self.argv = argv
        self.proc = PROCS.start(argv, cwd=ROOT, out=out, env=env)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            text = out.read_bytes()
            m = re.search(rb"listening on udp [\d.]+:(\d+)", text)
            if m:
                self.port = int(m.group(1))
                core = re.search(rb" core ((?:compiled|pure)[^\n]+)", text)
                self.core = core.group(1).decode() if core else "unknown"
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"sipledger B2BUA did not start:\n{self.tail()}")

    def stop(self) -> None:
        # SIGTERM makes it stop cleanly (flushing the journal, and writing the profile under cProfile)
        PROCS.stop(self.proc, grace=15.0 if self.profile else 5.0)
        self.proc = None

    def describe(self) -> str:
        # Which core ran (b2bua/native.py): compiled by mypyc, or the pure Python sources.
        return " ".join(a if " " not in a else repr(a) for a in self.argv) + f"  [core {self.core}]"

    def _stall_lines(self) -> list[str]:
        out = self.workdir / f"b2bua-{self.starts}.out"
        try:
            return [ln for ln in out.read_text(errors="replace").splitlines() if "loop stall max" in ln]
        except OSError:
            return []

    def _ask_stalls(self) -> str | None:
        """SIGUSR2 makes the B2BUA print its longest loop stall since the last ask (b2bua/server.py)."""
        if not self.alive():
            return None
        before = len(self._stall_lines())
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGUSR2)
        end = time.monotonic() + 3
        while time.monotonic() < end:
            lines = self._stall_lines()
            if len(lines) > before:
                return lines[-1]
            time.sleep(0.05)
        return None

    def step_started(self) -> None:
        self._ask_stalls()

    def step_finished(self) -> dict[str, float]:
        line = self._ask_stalls()
        m = re.search(r"loop stall max ([\d.]+) ms, collector pause max ([\d.]+) ms", line or "")
        return {"loop_stall_ms": float(m.group(1)), "gc_pause_ms": float(m.group(2))} if m else {}

    def journal_lines(self) -> int:
        try:
            with open(self.journal, "rb") as f:
                return sum(1 for _ in f)
        except OSError:
            return 0

    def heartbeat_active_calls(self) -> int | None:
        """active_calls of the last node.heartbeat in the journal (the B2BUA's own count)."""
        try:
            with open(self.journal, "rb") as f:
                f.seek(max(0, f.seek(0, 2) - 200_000))
                tail = f.read().decode(errors="replace").splitlines()
        except OSError:
            return None
        for line in reversed(tail):
            if '"node.heartbeat"' in line:
                with contextlib.suppress(ValueError):
                    return int(json.loads(line).get("active_calls"))
        return None


class SippyB2BUA(B2BUA):
    name = "sippy"

    def start(self) -> None:
        self.starts += 1
        self.port = free_port()
        out = self.workdir / f"b2bua-{self.starts}.out"
        launcher = ("import sys; from sippy.b2bua import main_func; sys.argv[0] = 'b2bua'; "
                    "sys.exit(main_func())")
        argv = [sys.executable, "-c", launcher, "-f", "-u", "-A", "0", "-l", HOST, "-p", str(self.port),
                "-s", f"{HOST}:{self.carrier_port}", "-c", str(self.workdir / "b2bua.sock"),
                "-P", str(self.workdir / "b2bua.pid"), "-L", str(self.workdir / "b2bua.log")]
        self.argv = argv
        env = dict(os.environ, SIPLOG_BEND="none")
        self.proc = PROCS.start(argv, cwd=self.workdir, out=out, env=env)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if udp_bound(self.port):
                time.sleep(0.5)  # its receiver/sender threads start right after the bind
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"Sippy B2BUA did not start:\n{self.tail()}")

    def describe(self) -> str:
        return "SIPLOG_BEND=none " + " ".join(a if " " not in a else repr(a) for a in self.argv)


# Kamailio as the C reference (issue 16): a transaction-stateful relay (tm) that tracks every call
# with the dialog module, forwarding all requests to the carrier. SIPp's uac sends its ACK and BYE to
# the address it called with no Route header, so the relay sends every request of the call to the
# carrier itself (it does not rely on loose routing), and the dialog module matches in-dialog
# requests by Call-ID and tags (dlg_match_mode 2).
_KAMAILIO_CFG = """#!KAMAILIO
debug=0
log_stderror=yes
children={children}
listen=udp:{host}:{port}
disable_tcp=yes
auto_aliases=no
mpath="{modules}"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "siputils.so"
loadmodule "textops.so"
loadmodule "dialog.so"
modparam("dialog", "default_timeout", 7200)
modparam("dialog", "dlg_match_mode", 2)
modparam("dialog", "send_bye", 1)

request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (is_method("INVITE") && !has_totag()) {{
        dlg_manage();
        record_route();
    }} else if (has_totag() && is_method("BYE|ACK|INVITE|UPDATE")) {{
        dlg_manage();
    }}
    if (is_method("ACK") && !t_check_trans()) {{
        $du = "sip:{host}:{carrier}";
        forward();
        exit;
    }}
    $du = "sip:{host}:{carrier}";
    if (!t_relay()) {{
        sl_reply_error();
    }}
    exit;
}}
"""


def kamailio_binary() -> str | None:
    return shutil.which("kamailio") or next(
        (p for p in ("/usr/sbin/kamailio", "/usr/local/sbin/kamailio") if Path(p).exists()), None)


def kamailio_modules() -> str:
    for p in ("/usr/lib/x86_64-linux-gnu/kamailio/modules", "/usr/lib/kamailio/modules",
              "/usr/local/lib64/kamailio/modules", "/usr/local/lib/kamailio/modules"):
        if Path(p, "tm.so").exists():
            return p + "/"
    return "/usr/lib/x86_64-linux-gnu/kamailio/modules/"


class KamailioB2BUA(B2BUA):
    """Kamailio 5.6 (Debian's ``kamailio``) configured by the bench: not a B2BUA but the C server whose
    call rate and latency the issue asks for; its CPU is its whole process group's."""

    name = "kamailio"
    group_cpu = True

    def __init__(self, workdir: Path, carrier_port: int, children: int = 4) -> None:
        super().__init__(workdir, carrier_port)
        self.children = children

    def start(self) -> None:
        binary = kamailio_binary()
        if binary is None:
            raise RuntimeError("kamailio not found (apt-get install kamailio)")
        self.starts += 1
        self.port = free_port()
        cfg = self.workdir / "kamailio.cfg"
        cfg.write_text(_KAMAILIO_CFG.format(children=self.children, host=HOST, port=self.port,
                                            carrier=self.carrier_port, modules=kamailio_modules()))
        rundir = self.workdir / "run"
        rundir.mkdir(parents=True, exist_ok=True)
        out = self.workdir / f"b2bua-{self.starts}.out"
        argv = [binary, "-DD", "-E", "-m", "256", "-M", "16", "-f", str(cfg), "-P",
                str(rundir / "kamailio.pid"), "-Y", str(rundir)]
        self.argv = argv
        self.proc = PROCS.start(argv, cwd=self.workdir, out=out)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if udp_bound(self.port):
                time.sleep(1.0)  # its worker processes fork right after the bind
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"Kamailio did not start:\n{self.tail()}")

    def describe(self) -> str:
        return " ".join(self.argv) + f"  (config written by the bench: {self.workdir / 'kamailio.cfg'})"
