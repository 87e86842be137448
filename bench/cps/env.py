"""Paths, hosts and tools of the call-rate benchmark."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
SCENARIOS = ROOT / "bench" / "b2bua"
UAC_XML = SCENARIOS / "uac_load.xml"
UAS_XML = SCENARIOS / "uas_load.xml"
SIPP = os.environ.get("SIPP_BINARY") or shutil.which("sipp") or "/usr/bin/sipp"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
FULL_RATES = "50,100,150,200,250,300,350,400,500,600,800,1000,1200,1500,2000"
QUICK_RATES = "50,200,400"
