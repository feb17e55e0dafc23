"""The bare PJSUA2 endpoint the floor programs start: one UDP transport on 127.0.0.1, the null
audio device, no logging, polled by the thread that created it (as the worker's SIP thread);
and, for the live-audio floors, one call to a UAS with the worker's codec preferences."""

import time
from collections.abc import Callable

import pjsua2 as pj

# As the worker: PCMU first, the codecs it never wants off.
CODEC_PRIORITIES = (
    ("PCMU/8000", 255),
    ("PCMA/8000", 254),
    ("G722/16000", 253),
    ("speex", 0),
    ("iLBC", 0),
    ("GSM", 0),
)


def start_endpoint() -> tuple[pj.Endpoint, int]:
    """The started endpoint and the id of its SIP transport."""
    endpoint = pj.Endpoint()
    endpoint.libCreate()
    config = pj.EpConfig()
    config.uaConfig.threadCnt = 0
    config.uaConfig.mainThreadOnly = True
    config.logConfig.level = 0
    config.logConfig.consoleLevel = 0
    config.medConfig.noVad = True
    endpoint.libInit(config)
    transport_config = pj.TransportConfig()
    transport_config.port = 0
    transport_config.boundAddress = "127.0.0.1"
    transport_config.publicAddress = "127.0.0.1"
    transport = endpoint.transportCreate(pj.PJSIP_TRANSPORT_UDP, transport_config)
    endpoint.libStart()
    endpoint.audDevManager().setNullDev()
    return endpoint, transport


class BareCall(pj.Call):  # type: ignore[misc]
    def __init__(self, account: pj.Account) -> None:
        super().__init__(account)
        self.confirmed = False
        self.media = False
        self.disconnected = False

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        state = self.getInfo().state
        if state == pj.PJSIP_INV_STATE_CONFIRMED:
            self.confirmed = True
        elif state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.disconnected = True

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        self.media = True


def poll_until(endpoint: pj.Endpoint, done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError("the UAS did not answer in time")
        endpoint.libHandleEvents(5)


def start_call(
    endpoint: pj.Endpoint, transport: int, target: str, rtp_port: int = 0
) -> tuple[pj.Account, BareCall]:
    """An account (no registration) and its call to `target`, confirmed with media up;
    `rtp_port` 0 leaves PJSUA's default (4000, or the next free one)."""
    for codec, priority in CODEC_PRIORITIES:
        endpoint.codecSetPriority(codec, priority)
    account_config = pj.AccountConfig()
    account_config.idUri = "sip:bench@127.0.0.1"
    account_config.sipConfig.transportId = transport
    account_config.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
    account_config.mediaConfig.transportConfig.publicAddress = "127.0.0.1"
    if rtp_port:
        account_config.mediaConfig.transportConfig.port = rtp_port
    account = pj.Account()
    account.create(account_config, True)
    call = BareCall(account)
    call.makeCall(target, pj.CallOpParam(True))
    poll_until(endpoint, lambda: call.confirmed and call.media, 10.0)
    return account, call


def hang_up(endpoint: pj.Endpoint, call: BareCall) -> None:
    call.hangup(pj.CallOpParam(True))
    poll_until(endpoint, lambda: call.disconnected, 10.0)
