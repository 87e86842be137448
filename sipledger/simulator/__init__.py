"""SIP traffic simulator: callers and carriers speaking real SIP over UDP on loopback.

The demo starts carriers (``start_carriers``), points the B2BUA's gateways at their ports, starts
callers, and plays a seeded ``TrafficPlan`` with ``run_traffic``. All SIP logic comes from the
sans-I/O core in ``b2bua.sip``; this package only adds sockets, timers and call scripts.
"""

from sipledger.simulator.behaviours import (
    CALLER_KINDS,
    CARRIER_CODES,
    CARRIER_KINDS,
    CallerBehaviour,
    CarrierBehaviour,
    callee_number,
    carrier_kind_from_callee,
)
from sipledger.simulator.caller import Caller, CallerCall
from sipledger.simulator.carrier import Carrier, CarrierCall
from sipledger.simulator.endpoint import SIM_TIMERS, SipEndpoint
from sipledger.simulator.outcome import CallOutcome, CarrierCallRecord
from sipledger.simulator.traffic import (
    DEFAULT_MIX,
    MixEntry,
    PlannedCall,
    TrafficPlan,
    close_all,
    gateway_entries,
    run_traffic,
    start_carriers,
    summarize,
)

__all__ = [
    "CALLER_KINDS",
    "CARRIER_CODES",
    "CARRIER_KINDS",
    "DEFAULT_MIX",
    "SIM_TIMERS",
    "CallOutcome",
    "Caller",
    "CallerBehaviour",
    "CallerCall",
    "Carrier",
    "CarrierBehaviour",
    "CarrierCall",
    "CarrierCallRecord",
    "MixEntry",
    "PlannedCall",
    "SipEndpoint",
    "TrafficPlan",
    "callee_number",
    "carrier_kind_from_callee",
    "close_all",
    "gateway_entries",
    "run_traffic",
    "start_carriers",
    "summarize",
]
