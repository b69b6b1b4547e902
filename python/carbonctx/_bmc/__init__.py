"""The node's wall power from its BMC over Redfish (HTTPS, credentials from settings): a client
for the Redfish resources that carry it (``redfish``, reading their documents with
``payload``), bounded requests that never show the credentials (``transport``), when each
reading stood on the sampler's clock (``timing``), and the thread that feeds the readings to
the native sampler (``poller``)."""

from carbonctx._bmc.poller import LABEL, SOURCE_ID, STOP_WAIT_S, BmcSource
from carbonctx._bmc.redfish import Locator, Reading, RedfishPower
from carbonctx._bmc.transport import Limits, RedfishError, Transport

__all__ = [
    "LABEL",
    "SOURCE_ID",
    "STOP_WAIT_S",
    "BmcSource",
    "Limits",
    "Locator",
    "Reading",
    "RedfishError",
    "RedfishPower",
    "Transport",
]
