"""The echo line: a SIP line on 127.0.0.1 that answers every call at once and sends each call's
audio straight back, so that a caller hears itself. `make run` starts one for its worker to
call; `python -m sip_worker.echo_line` runs one by hand.

One PJSUA2 endpoint, on the owner thread of `PjOwner` (PJSUA2 aborts the process when another
thread touches it); the main thread only waits for SIGTERM/SIGINT, then stops the owner, which
hangs up every call and destroys the endpoint. Once it answers, it prints one line on stdout:
`echo line: answering at sip:echo@127.0.0.1:<port>`.
"""

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

import pjsua2 as pj

from sip_worker.config import WorkerConfig
from sip_worker.errors import PhoneError
from sip_worker.phone.bindings import SipAccount, SipCall, answer_parameters
from sip_worker.phone.owner import PjOwner
from sip_worker.phone.threads import owner_thread

HOST = "127.0.0.1"
USER = "echo"
READY_PREFIX = "echo line: answering at "
START_TIMEOUT = 30.0

log = logging.getLogger("sip_worker.echo_line")


class EchoLine:
    """The line's account and its calls. Owner thread only: its SipAccount and SipCalls report
    to it, and it outlives them all."""

    @owner_thread
    def __init__(self, owner: PjOwner, transport_id: int, sip_port: int, rtp_port: int) -> None:
        self._owner = owner
        self._calls: list[SipCall] = []
        self.uri = f"sip:{USER}@{HOST}:{sip_port}"
        config = pj.AccountConfig()
        config.idUri = self.uri  # no registrar: it answers whatever reaches its port
        config.sipConfig.transportId = transport_id
        media = config.mediaConfig.transportConfig
        media.port = rtp_port
        media.boundAddress = HOST
        media.publicAddress = HOST
        self._account: SipAccount | None = SipAccount(self)
        self._account.create(config, True)
        owner.watch_live_calls(lambda: tuple(self._calls))
        owner.on_stop = self._let_go

    @owner_thread
    def incoming_call(self, account: SipAccount, call_id: int, message: str, source: str) -> None:
        # Any source: the echo line is a local peer on 127.0.0.1 for `make run`.
        call = SipCall(self, account, call_id)
        self._calls.append(call)
        try:
            call.answer(answer_parameters(200))
        except pj.Error as error:
            log.warning("could not answer a call: %s", error.reason)

    def subscription_admitted(self, account: SipAccount, source: str) -> bool:
        return True  # as PJSUA does: the echo line is a local peer

    @owner_thread
    def call_media_changed(self, call: SipCall) -> None:
        info = call.getInfo()  # keep it: .media of a SWIG temporary is freed memory
        for media in info.media:
            if media.type == pj.PJMEDIA_TYPE_AUDIO and media.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                audio = call.getAudioMedia(media.index)
                audio.startTransmit(audio)  # the caller's audio, back to the caller

    @owner_thread
    def call_disconnected(self, call: SipCall, code: int, reason: str) -> None:
        if call in self._calls:
            self._calls.remove(call)
        self._owner.retire(call)

    def registration_changed(
        self, account: SipAccount, code: int, reason: str, expiration: int
    ) -> None:
        """Never told: the line has no registrar."""

    def call_confirmed(self, call: SipCall) -> None:
        """Nothing to do: the audio loops from the moment media is up."""

    def call_transfer_progress(self, call: SipCall, code: int, reason: str, final: bool) -> None:
        """Never told: the line transfers nothing."""

    def call_dtmf(self, call: SipCall, digit: str, duration_ms: int) -> None:
        """Nothing to do: the line echoes audio, not the caller's digits."""

    def call_redirected(self, call: SipCall, target: str, response: str) -> bool:
        """Never told: the line places no calls."""
        return False

    @owner_thread
    def _let_go(self) -> None:
        """At stop, after hangupAllCalls: every PJSUA2 object is dropped before libDestroy."""
        self._calls.clear()
        if self._account is not None:
            self._account.shutdown()
            self._owner.retire(self._account)
            self._account = None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sip_worker.echo_line",
        description=(
            "A SIP line on 127.0.0.1 that answers every call and echoes its audio, until "
            "SIGTERM or Ctrl-C."
        ),
    )
    parser.add_argument("--port", type=int, default=5062, help="SIP (UDP) port; 0 = any free one")
    parser.add_argument("--rtp-port", type=int, default=4400, help="first RTP port (default 4400)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    options = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="echo line: %(levelname)s %(message)s")
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    owner = PjOwner(WorkerConfig(sip_host=HOST, sip_port=options.port))
    try:
        endpoint = owner.start()
        line = owner.submit(
            lambda: EchoLine(owner, endpoint.transport_id, endpoint.sip_port, options.rtp_port)
        ).result(timeout=START_TIMEOUT)
    except PhoneError as error:
        print(f"echo line: cannot start: {error}", file=sys.stderr)
        _exit(1)
    print(READY_PREFIX + line.uri, flush=True)
    stop.wait()
    owner.stop()
    _exit(0)


def _exit(code: int) -> None:
    # os._exit, as the worker does: a PJSUA2 object still referenced at interpreter teardown
    # (an owner that did not stop in time) would abort the process.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
