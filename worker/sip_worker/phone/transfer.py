"""Transfer, a call feature: a blind transfer (REFER) and what its NOTIFYs say.

A final 2xx NOTIFY ends our leg; a final failure leaves the call connected, with a status
saying why; after `100 Accepted`, the final NOTIFY is awaited a bounded time.
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import pjsua2 as pj

from sip_worker.errors import Unreachable
from sip_worker.phone.bindings import SipCall, request_parameters
from sip_worker.phone.threads import owner_thread

log = logging.getLogger(__name__)

# After a transfer was accepted, how long to wait for the final NOTIFY before leaving anyway.
FINAL_NOTIFY_TIMEOUT = 10.0


@dataclass(frozen=True)
class TransferOutcome:
    """What a NOTIFY means for the call."""

    leave: bool = False  # the transfer succeeded: hang up our leg
    failed: str = ""  # the transfer failed, for this reason: the call stays connected
    await_final: bool = False  # accepted: wait FINAL_NOTIFY_TIMEOUT for the final NOTIFY


class Transfer:
    """Owner thread only."""

    def __init__(self) -> None:
        self.target: str | None = None  # the transfer_id while a transfer is under way
        self.left = False  # the transfer succeeded: the call leaves by it
        # The SIP code of the last attempt (statuses carry it): 202 once the REFER was accepted.
        self.response_code = 0

    @owner_thread
    def start(
        self, sip_call: SipCall, uri: str, transfer_id: str, headers: Mapping[str, str]
    ) -> None:
        try:
            sip_call.xfer(uri, request_parameters(headers))
        except pj.Error as error:
            raise Unreachable(f"cannot transfer to {uri}: {error.reason}") from None
        self.target = transfer_id
        self.response_code = 0

    def progress(self, code: int, reason: str, final: bool) -> TransferOutcome:
        """What the NOTIFY `code reason` of the transfer under way means."""
        log.info("transfer to %s: %d %s%s", self.target, code, reason, " (final)" * final)
        if final and 200 <= code < 300:
            # A NOTIFY of success means the REFER was accepted, even when it overtook the 202
            # (a proxy may relay the two in either order; PJSUA then reports no "Accepted").
            self.response_code = 202
            self.left = True
            return TransferOutcome(leave=True)
        if final:
            if self.response_code != 202:
                self.response_code = code  # the REFER itself was refused
            self.target = None
            return TransferOutcome(failed=f"{code} {reason}".strip())
        if code == 100 and reason.lower() == "accepted":
            self.response_code = 202  # PJSUA reports the REFER's 202 as "100 Accepted"
            return TransferOutcome(await_final=True)
        return TransferOutcome()
