"""The session: the line the phone offers. It admits or refuses incoming calls (auto-answer,
refusals), places outgoing ones, and holds the one active call; every request of the gRPC API
reaches the phone's rooms through it. Owner thread only.

Refusals keep their PJSUA call slot for REJECT_DELAY_S before their final answer: PJSUA opens
an RTP and an RTCP socket for every INVITE it gives a slot; refusing at once would let a flood
through to media set-up and exhaust PJSIP's 64 socket slots (closed sockets free theirs only
after 500 ms), which aborts the process. Held call slots cap that: while all four are taken,
PJSUA answers 486 itself and opens nothing.

An INVITE from an untrusted source (see `trusted_sources`) is refused with 403 before anything
else is looked at: no status, no ringing, no media. PJSUA has by then taken a call slot, opened
the RTP and RTCP sockets and sent 100 Trying (all before the application hears of an INVITE);
the 403 keeps that slot for REJECT_DELAY_S like every refusal, so a scanner's flood cannot
exhaust the sockets either. With `--untrusted-policy drop` none of that happens: a filter on
the SIP socket (see `source_filter`) keeps the configured networks and the peers of the
accounts in use, and the kernel discards the rest before PJSIP reads it.
"""

import functools
import ipaddress
import itertools
import logging
import time
from concurrent.futures import Future

import pjsua2 as pj

from ondewo.sip.sip_pb2 import SipStatus
from sip_contract.status import CallStep, Direction
from sip_worker.errors import InvalidArgument, PhoneError, Unreachable, WrongState
from sip_worker.history import StatusHistory
from sip_worker.incoming_headers import (
    address_of,
    body_is_truncated,
    caller_uri,
    contact_uri,
    custom_headers,
)
from sip_worker.metrics import count_untrusted_request
from sip_worker.phone.audio_tap import AudioTap, EndReason, StreamSettings
from sip_worker.phone.bindings import SipAccount, SipCall, answer_parameters
from sip_worker.phone.call import ActiveCall, CallAction, CallServices
from sip_worker.phone.call_audio import PortPool
from sip_worker.phone.hand_off import Timer
from sip_worker.phone.owner import PjOwner, pending_future
from sip_worker.phone.playback import StagedWav
from sip_worker.phone.registration import Registration
from sip_worker.phone.settings import PhoneSettings
from sip_worker.phone.source_filter import SourceFilter
from sip_worker.phone.statuses import CallIdentity, StatusRecorder
from sip_worker.phone.threads import owner_thread
from sip_worker.phone.trusted_sources import Address, TrustedSources, resolve, uri_host
from sip_worker.validation import AccountName, target_uri

log = logging.getLogger(__name__)

REJECT_DELAY_S = 0.2


class Session:
    def __init__(
        self,
        owner: PjOwner,
        settings: PhoneSettings,
        transport_id: int,
        sip_port: int,
        history: StatusHistory,
    ) -> None:
        self._owner = owner
        self._settings = settings
        self._filter: SourceFilter | None = None
        if settings.untrusted_policy == "drop":
            self._filter = SourceFilter(sip_port, settings.sip_transport)
            self._filter.admit(settings.trusted_sources)
        self.recorder = StatusRecorder(history, self._account_name)
        self.registration = Registration(owner, settings, transport_id, self.recorder, self)
        self.call: ActiveCall | None = None
        self._interval: int | None = None  # auto-answer seconds while the session is open
        self._closed = False  # takes no new calls (draining or stopping)
        self._stopping = False
        self._refusing: list[SipCall] = []  # refused calls awaiting their final answer
        self._serials = itertools.count(1)
        self._ports = PortPool()
        self._trusted = TrustedSources(settings.trusted_sources)
        self._tls = settings.sip_transport == "tls"
        self._services = CallServices(
            owner, self.recorder, self._later, self._post, self._ports, settings.media_timeout
        )
        owner.watch_live_calls(self._live_calls)
        owner.on_stop = self._let_go

    def _account_name(self) -> str:
        return self.registration.account_name()

    # ------------------------------------------------------------ session

    @owner_thread
    def register_account(
        self, name: AccountName, password: str, record_failure: bool = False
    ) -> "Future[None]":
        self._check_accepting()
        if name.secure and self._settings.sip_transport != "tls":
            raise InvalidArgument(
                f"sips: accounts need SIP over TLS; this worker runs "
                f"{self._settings.sip_transport} (--sip-transport tls)"
            )
        if self.call is not None:
            raise WrongState("a call is in progress; end it before registering")
        if self.registration.in_progress():
            raise WrongState("a registration is already in progress")
        current = self.registration.current
        if (
            self._interval is not None
            and current is not None
            and current.name.canonical != name.canonical
        ):
            raise WrongState(
                f"a session for {current.name.canonical} is running; end it before "
                "registering another account"
            )
        return self.registration.register(name, password, record_failure)

    def account_registered(self) -> None:
        if self._interval is not None and self.call is None:
            # The session's account registered again: the session goes on (a call that is
            # on has gone on all along; its statuses say so).
            self.recorder.session(SipStatus.ready)

    @owner_thread
    def start(self, name: AccountName, interval: int) -> "Future[None] | None":
        self._check_accepting()
        account = self.registration.current
        if account is None or account.name.canonical != name.canonical:
            raise WrongState(f"account {name.canonical} is not registered; call RegisterAccount")
        if self.call is not None:
            raise WrongState("a call is in progress")
        if self.registration.in_progress():
            raise WrongState("a registration is in progress")
        if account.usable:
            self._open(interval)
            return None

        def open_after_registration(error: PhoneError | None) -> None:
            if error is None:
                self.recorder.session(SipStatus.registered)
                self._open(interval)

        return self.registration.register_again(account, open_after_registration)

    def _open(self, interval: int) -> None:
        self._interval = interval
        self.recorder.session(SipStatus.ready)

    @owner_thread
    def end(self) -> "Future[None]":
        account = self.registration.current
        if account is None or (self._interval is None and not account.registered):
            raise WrongState("there is no session to end")
        if self.registration.in_progress():
            raise WrongState("a registration is in progress")
        self._interval = None
        done = pending_future()

        def unregister() -> None:
            self.recorder.session(SipStatus.no_session, account_name=account.name.canonical)
            self.registration.unregister(account, done)

        if self.call is None:
            unregister()
        else:
            self.call.on_finished.append(unregister)
            self.call.hang_up_now()
        return done

    @owner_thread
    def begin_drain(self) -> "Future[None]":
        """Refuses new calls and keeps the current one; the Future tells when none is left."""
        self._closed = True
        done = pending_future()
        if self.call is None:
            done.set_result(None)
        else:
            self.call.on_finished.append(lambda: done.set_result(None))
        return done

    @owner_thread
    def begin_shutdown(self, deadline: float, reason: str) -> "Future[None]":
        """Refuses new calls, ends the call softly (`reason` says why), then unregisters; the
        Future tells when."""
        self._closed = self._stopping = True
        done = pending_future()

        def unregister() -> None:
            self._interval = None
            self.registration.unregister(self.registration.current, done)

        if self.call is None:
            unregister()
            return done
        self.call.on_finished.append(unregister)
        remaining = max(deadline - time.monotonic(), 0.0)
        self.call.hang_up_softly(
            min(self._settings.soft_hangup_timeout, remaining / 2), description=reason
        )
        return done

    def _check_accepting(self) -> None:
        if self._closed:
            raise Unreachable("the worker is shutting down and takes no new calls")

    # ------------------------------------------------------------ calls

    @owner_thread
    def start_call(self, callee_id: str, headers: dict[str, str], requested_ns: int) -> None:
        self._check_accepting()
        account = self.registration.current
        if account is None or self._interval is None:
            raise WrongState("there is no session; call StartSession first")
        if self.call is not None:
            raise WrongState("a call is already in progress")
        if self.registration.in_progress():
            raise WrongState("a registration is in progress")
        if (lost := self.registration.lost_reason()) is not None:
            raise Unreachable(
                f"the registration of {account.name.canonical} is lost ({lost}); "
                "the worker is registering again"
            )
        uri = target_uri(callee_id, account.name, "callee_id", self._tls)
        self._check_answers_get_in(uri, account.name.host)
        identity = CallIdentity(
            next(self._serials), Direction.OUTGOING, callee_id, headers, requested_ns
        )
        call = self._take_line(SipCall(self, account.sip, pj.PJSUA_INVALID_ID), identity)
        call.dial(uri, headers)

    def _check_answers_get_in(self, uri: str, account_host: str) -> None:
        """Under `--untrusted-policy drop` the filter would discard the answers of a host
        outside the trusted set, and the call would time out after 32 s; refused at once
        instead. Through an outbound proxy every request goes to the proxy, a peer."""
        if self._filter is None or self._settings.outbound_proxy:
            return
        host = uri_host(uri)
        if host is None or host.lower() == account_host.strip("[]").lower():
            return  # the account's host is a peer (or PJSUA refuses the URI itself)
        if self._host_trusted(uri) is False:
            raise WrongState(
                f"{host} is not a trusted source, and with --untrusted-policy drop its answers "
                "would be discarded: call through the registrar or --outbound-proxy, or list "
                "its network with --trusted-source"
            )

    @owner_thread
    def incoming_call(self, account: SipAccount, call_id: int, message: str, source: str) -> None:
        current = self.registration.current
        refusal = 0
        if not self._admits("INVITE", source):
            refusal = 403
        elif body_is_truncated(message):
            refusal = 400
        elif self._closed:
            refusal = 503
        elif (
            current is None
            or account is not current.sip
            or self._interval is None
            or self.registration.in_progress()
        ):
            refusal = 480
        elif self.call is not None:
            log.info("incoming call while busy: 486")
            refusal = 486
        if refusal:
            self._refuse(SipCall(self, account, call_id), refusal)
            return
        interval = self._interval
        assert interval is not None
        sip = SipCall(self, account, call_id)
        # The From URI as sent: PJSUA2's remoteUri drops the port (RFC 3261 From/To form).
        caller = caller_uri(message) or address_of(str(sip.getInfo().remoteUri))
        identity = CallIdentity(
            next(self._serials), Direction.INCOMING, caller, custom_headers(message)
        )
        call = self._take_line(sip, identity)
        call.learn_sip_call_id()
        self.recorder.call(call.identity, CallStep.INITIATED)
        if interval == 0:
            self._later(REJECT_DELAY_S, call.serial, functools.partial(ActiveCall.refuse, code=486))
            return
        call.ring(interval)

    @owner_thread
    def peers_changed(self, peers: frozenset[Address]) -> None:
        if self._filter is not None:
            hosts = (ipaddress.ip_network(address) for address in peers)
            self._filter.admit((*self._settings.trusted_sources, *hosts))

    @owner_thread
    def subscription_admitted(self, source: str) -> bool:
        return self._admits("SUBSCRIBE", source)

    def _admits(self, method: str, source: str) -> bool:
        """Whether `source` may start something; counts it if not."""
        current = self.registration.current
        peers = current.peers if current is not None else frozenset()
        if self._trusted.admits(source, peers):
            return True
        log.debug("%s from the untrusted source %s: 403", method, source)
        count_untrusted_request(method, "untrusted_source")
        return False

    @owner_thread
    def end_call(self, hard: bool) -> None:
        self._current_call().end(hard, self._settings.soft_hangup_timeout)

    @owner_thread
    def transfer_call(self, transfer_id: str, headers: dict[str, str]) -> None:
        call = self._current_call()
        account = self.registration.current
        assert account is not None
        uri = target_uri(transfer_id, account.name, "transfer_id", self._tls)
        call.start_transfer(uri, transfer_id, headers)

    @owner_thread
    def play(self, staged: list[StagedWav]) -> None:
        self._current_call().play(staged)

    @owner_thread
    def set_muted(self, muted: bool) -> None:
        self._current_call().set_muted(muted)

    @owner_thread
    def open_audio(self, settings: StreamSettings) -> AudioTap:
        return self._current_call().open_audio(settings)

    @owner_thread
    def close_audio(self, tap: AudioTap, reason: EndReason) -> None:
        self._for_call(
            tap.call_serial,
            functools.partial(ActiveCall.close_audio, serial=tap.serial, reason=reason),
        )

    @owner_thread
    def clear_playback(self, tap: AudioTap) -> None:
        self._for_call(tap.call_serial, ActiveCall.clear_playback)

    @owner_thread
    def send_dtmf(self, digits: str, sip_info: bool, duration_ms: int) -> None:
        self._current_call().send_dtmf(digits, sip_info, duration_ms)

    def _current_call(self) -> ActiveCall:
        if self.call is None:
            raise WrongState("there is no call")
        return self.call

    def _take_line(self, sip: SipCall, identity: CallIdentity) -> ActiveCall:
        call = ActiveCall(self._services, sip, identity)
        call.on_finished.append(functools.partial(self._free_line, call.serial))
        self.call = call
        return call

    def _free_line(self, serial: int) -> None:
        if self.call is not None and self.call.serial == serial:
            self.call = None

    def _refuse(self, sip: SipCall, code: int) -> None:
        if self._stopping:
            self._send_refusal(sip, code)
            return
        self._refusing.append(sip)
        self._owner.schedule(REJECT_DELAY_S, functools.partial(self._send_refusal, sip, code))

    def _send_refusal(self, sip: SipCall, code: int) -> None:
        if sip in self._refusing:
            self._refusing.remove(sip)
        if not sip.disconnected:  # the caller may have given up meanwhile
            try:
                sip.hangup(answer_parameters(code))
            except pj.Error as error:
                log.warning("could not reject an incoming call: %s", error.reason)
        self._owner.retire(sip)

    def _later(self, delay: float, serial: int, action: CallAction) -> Timer:
        return self._owner.schedule(delay, functools.partial(self._for_call, serial, action))

    def _post(self, serial: int, action: CallAction) -> None:
        self._owner.post(functools.partial(self._for_call, serial, action))

    def _for_call(self, serial: int, action: CallAction) -> None:
        if self.call is not None and self.call.serial == serial:
            action(self.call)

    def _live_calls(self) -> tuple[SipCall, ...]:
        active = (self.call.sip,) if self.call is not None else ()
        return (*active, *self._refusing)

    def _let_go(self) -> None:
        """At stop, after hangupAllCalls: every PJSUA2 object is dropped before libDestroy."""
        self.registration.retire_all()
        self.call = None
        self._refusing.clear()
        self._ports.abandon()
        if self._filter is not None:
            self._filter.close()

    # ------------------------------------------------------------ SIP events of calls

    @owner_thread
    def call_confirmed(self, sip: SipCall) -> None:
        if (call := self._active(sip)) is not None:
            call.confirmed()

    @owner_thread
    def call_disconnected(self, sip: SipCall, code: int, reason: str) -> None:
        call = self._active(sip)
        if call is not None:
            call.disconnected(code, reason)
        elif sip not in self._refusing:
            self._owner.retire(sip)

    @owner_thread
    def call_media_changed(self, sip: SipCall) -> None:
        if (call := self._active(sip)) is not None:
            call.media_changed()

    @owner_thread
    def call_dtmf(self, sip: SipCall, digit: str, duration_ms: int) -> None:
        if (call := self._active(sip)) is not None:
            call.dtmf_received(digit, duration_ms)

    @owner_thread
    def call_transfer_progress(self, sip: SipCall, code: int, reason: str, final: bool) -> None:
        if (call := self._active(sip)) is not None:
            call.transfer_progress(code, reason, final)

    @owner_thread
    def call_redirected(self, sip: SipCall, target: str, response: str) -> bool:
        call = self._active(sip)
        if call is None:
            return False
        # PJSUA's parse of the Contact is what it follows (its text drops the port); the
        # far end's own text, port kept, is what the status shows if it names the same host.
        followed = address_of(target)
        shown = contact_uri(response)
        if shown is None or uri_host(shown) != uri_host(followed):
            shown = followed
        return call.redirected(shown, self._may_redirect_to(followed))

    def _may_redirect_to(self, uri: str) -> bool:
        """PJSUA answers a challenge to the redirected INVITE with the account's credentials,
        so a 3xx may only send it to a trusted host, or to the outbound proxy (every INVITE
        goes there first, whatever its target): else anyone we call could redirect us to a
        host of its choosing and collect a digest of the password to crack offline."""
        return bool(self._settings.outbound_proxy) or self._host_trusted(uri) is True

    def _host_trusted(self, uri: str) -> bool | None:
        """Whether every address the URI's host resolves to is a trusted source (a configured
        network or a peer of the account in use); None if it names no host that resolves."""
        host = uri_host(uri)
        addresses = resolve([host]) if host is not None else frozenset()
        if not addresses:
            return None
        current = self.registration.current
        peers = current.peers if current is not None else frozenset()
        return all(self._trusted.trusts(address, peers) for address in addresses)

    def _active(self, sip: SipCall) -> ActiveCall | None:
        return self.call if self.call is not None and self.call.sip is sip else None
