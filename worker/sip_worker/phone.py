"""The SIP user agent: one account, one call at a time, over PJSUA2.

Threading: exactly one thread (the "SIP thread") creates, polls and destroys the PJSUA2
endpoint and every PJSUA2 object. The public methods run on API threads: they check their
input there, hand a closure to the SIP thread and wait for its outcome. Only plain values cross
threads, never PJSUA2 objects: the wheel aborts the process when one is used from, or freed
on, a thread it does not know, or is still referenced at libDestroy.

Every status is appended, in order, to the StatusHistory given at construction.
"""

import atexit
import functools
import gc
import itertools
import logging
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pjsua2 as pj

from ondewo.sip.sip_pb2 import SipStatus
from sip_worker.errors import (
    AuthenticationFailed,
    InvalidArgument,
    PhoneError,
    TooLarge,
    Unreachable,
    WrongState,
)
from sip_worker.hand_off import HandOff, Timer
from sip_worker.history import StatusHistory
from sip_worker.incoming_headers import body_is_truncated, caller_uri, custom_headers
from sip_worker.validation import AccountName, check_headers, parse_account_name, target_uri
from sip_worker.wav import playable_wav

log = logging.getLogger(__name__)
pjsip_log = logging.getLogger("sip_worker.pjsip")

P = ParamSpec("P")
T = TypeVar("T")

# How long the SIP thread blocks in one poll when nothing is due; hand-offs wake it earlier.
IDLE_POLL_MS = 100
# Slack between the end of the last queued audio and the BYE, for the far end's jitter buffer.
SOFT_HANGUP_SLACK = 0.2
# After a transfer was accepted, how long to wait for the final NOTIFY before leaving anyway.
TRANSFER_FINAL_NOTIFY_TIMEOUT = 10.0
# Bound on an API thread's wait for the SIP thread beyond an operation's own timeouts.
HAND_OFF_TIMEOUT = 30.0
UNREGISTER_TIMEOUT = 5.0
# A refused INVITE keeps its PJSUA call slot this long before its final answer. PJSUA opens an
# RTP and an RTCP socket for every INVITE it gives a slot; refusing at once would let a flood
# through to media set-up and exhaust PJSIP's 64 socket slots (closed sockets free theirs only
# after 500 ms), which aborts the process. Held call slots cap that: while all are taken, PJSUA
# answers 486 itself and opens nothing.
REJECT_DELAY_S = 0.2
# Bound on the audio of one call waiting to play (about 11 minutes at 48 kHz): it is held in
# memory-backed temporary files.
MAX_QUEUED_AUDIO_BYTES = 64 * 1024 * 1024
# Preferred codecs first; the others waste CPU (speex) or are rarely offered.
CODEC_PRIORITIES = (
    ("PCMU/8000", 255),
    ("PCMA/8000", 254),
    ("G722/16000", 253),
    ("speex", 0),
    ("iLBC", 0),
    ("GSM", 0),
)


@dataclass(frozen=True)
class PhoneSettings:
    sip_host: str = "127.0.0.1"
    sip_port: int = 5060  # 0 = any free port
    sip_transport: str = "udp"  # "udp" | "tcp"
    rtp_port: int = 4000  # first RTP port
    public_address: str | None = None  # address for Contact and SDP (pods behind NAT)
    auth_username: str | None = None  # digest user if it differs from the account user
    outbound_proxy: str | None = None  # SIP URI of an outbound proxy
    soft_hangup_timeout: float = 10.0  # bound on waiting for queued audio before BYE
    register_timeout: float = 10.0  # bound on waiting for the registrar's final answer


def _guarded(method: Callable[P, None]) -> Callable[P, None]:
    """Wraps a PJSUA2 callback so that a Python error is logged and goes no further.

    An exception escaping into SWIG is printed and parked in sys.last_value, which keeps the
    PJSUA2 object alive until after libDestroy and aborts the process at exit.
    """

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            method(*args, **kwargs)
        except Exception:
            log.exception("error in the PJSUA2 callback %s", method.__name__)

    return wrapper


@contextmanager
def _stdout_silenced() -> Any:
    """libCreate prints a banner on fd 1 before any log writer exists; keep stdout clean."""
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _sip_code_reason(code: int, reason: str) -> str:
    return f"{code} {reason}".strip()


def _address_of(name_addr: str) -> str:
    """`sip:user@host` from a name-addr such as `"Bob" <sip:bob@host>;tag=x`."""
    start, end = name_addr.find("<"), name_addr.find(">")
    if 0 <= start < end:
        return name_addr[start + 1 : end]
    return name_addr.split(";", 1)[0].strip()


def _call_parameters(headers: Mapping[str, str]) -> Any:
    """A CallOpParam carrying `headers` (already checked) on the request it sends."""
    parameters = pj.CallOpParam(True)
    for name, value in headers.items():
        header = pj.SipHeader()
        header.hName = name
        header.hValue = value
        parameters.txOption.headers.append(header)
    return parameters


class _LogWriter(pj.LogWriter):  # type: ignore[misc]
    @_guarded
    def write(self, entry: Any) -> None:
        level = logging.WARNING if entry.level <= 2 else logging.DEBUG
        if entry.level <= 1:
            level = logging.ERROR
        pjsip_log.log(level, "%s", str(entry.msg).rstrip())


@dataclass(eq=False)
class _Registration:
    """A REGISTER or un-REGISTER awaiting the registrar's final answer."""

    register: bool
    done: "Future[None]"
    timer: Timer
    # Runs on the SIP thread with the outcome before `done` completes, so that the statuses
    # it appends are in the history by the time the waiting API call returns.
    on_answer: Callable[[PhoneError | None], None]


class _Account(pj.Account):  # type: ignore[misc]
    def __init__(self, phone: "Phone", name: AccountName) -> None:
        super().__init__()
        self.phone = phone
        self.name = name
        self.registered = False
        # The REGISTER (register=True) or un-REGISTER in flight, if any.
        self.pending: _Registration | None = None

    @_guarded
    def onRegState(self, prm: Any) -> None:
        self.phone._on_reg_state(self, int(prm.code), str(prm.reason), int(prm.expiration))

    @_guarded
    def onIncomingCall(self, prm: Any) -> None:
        self.phone._on_incoming_call(self, int(prm.callId), str(prm.rdata.wholeMsg))


@dataclass(eq=False)
class _CallState:
    """What the phone tracks about its one call; lives on the SIP thread."""

    serial: int
    outgoing: bool
    callee_id: str
    headers: dict[str, str]
    # Wall-clock ns at which the worker took the StartCall: `outgoing_call_initiated` carries it.
    requested_ns: int | None = None
    announced: bool = False  # its *_call_initiated status is in the history
    connected: bool = False
    finished: bool = False
    muted: bool = False
    soft_hangup: bool = False
    transfer_id: str | None = None
    audio: Any = None  # the call's pj.AudioMedia while media is active
    player: "_Player | None" = None
    queued_wavs: deque[tuple[Path, int]] = field(default_factory=deque)  # (file, bytes)
    queued_bytes: int = 0  # of the queued files and the one playing
    timers: list[Timer] = field(default_factory=list)
    on_finished: list[Callable[[], None]] = field(default_factory=list)


class _Call(pj.Call):  # type: ignore[misc]
    def __init__(self, phone: "Phone", account: _Account, call_id: int, state: _CallState | None):
        super().__init__(account, call_id)
        self.phone = phone
        self.state = state  # None for calls the phone only rejects
        self.disconnected = False

    @_guarded
    def onCallState(self, prm: Any) -> None:
        info = self.getInfo()
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED:
            self.phone._on_call_confirmed(self)
        elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.disconnected = True
            self.phone._on_call_disconnected(self, int(info.lastStatusCode), str(info.lastReason))

    @_guarded
    def onCallMediaState(self, prm: Any) -> None:
        self.phone._on_call_media_state(self)

    @_guarded
    def onCallTransferStatus(self, prm: Any) -> None:
        prm.cont = True  # stay subscribed until the final NOTIFY
        self.phone._on_transfer_status(
            self, int(prm.statusCode), str(prm.reason), bool(prm.finalNotify)
        )


class _Player(pj.AudioMediaPlayer):  # type: ignore[misc]
    def __init__(self, phone: "Phone", serial: int, size: int) -> None:
        super().__init__()
        self.phone = phone
        self.serial = serial
        self.size = size  # bytes of its file, counted in the call's queued audio

    @_guarded
    def onEof2(self) -> None:
        # Runs on a media thread: only hand off, never touch PJSUA2 here.
        self.phone._hand_off.post(functools.partial(self.phone._on_player_eof, self.serial))


class Phone:
    """One SIP user agent; see the module docstring for the threading rules."""

    def __init__(self, settings: PhoneSettings, history: StatusHistory) -> None:
        if settings.sip_transport not in ("udp", "tcp"):
            raise InvalidArgument(f"unknown SIP transport {settings.sip_transport!r}")
        self._settings = settings
        self._history = history
        self._hand_off = HandOff()
        self._serials = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: PhoneError | None = None
        self._stop_lock = threading.Lock()
        self._stopped = threading.Event()
        self._ready = False
        self._sip_port = 0
        self._wav_dir = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None
        # Owned by the SIP thread:
        self._endpoint: Any = None
        self._log_writer: _LogWriter | None = None
        self._transport_id = -1
        self._running = False
        self._stopping = False
        self._account: _Account | None = None
        self._registering: _Account | None = None  # a new account awaiting its first answer
        self._session_interval: int | None = None  # the session's auto-answer interval
        self._call: _Call | None = None
        self._retired: list[object] = []  # PJSUA2 objects to free outside callbacks
        self._rejecting: list[_Call] = []  # refused calls awaiting their final answer
        self._last_timestamp_ns = 0  # the history's timestamps never go backwards

    # ----------------------------------------------------------------- life cycle

    @property
    def sip_port(self) -> int:
        return self._sip_port

    def is_ready(self) -> bool:
        return self._ready

    def start(self) -> None:
        """Starts the SIP thread and binds the SIP transport; raises PhoneError on failure."""
        if self._thread is not None:
            raise WrongState("the phone was already started")
        self._thread = threading.Thread(target=self._run, name="sip", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self._thread.join()
            raise self._start_error
        atexit.register(self.stop, 0.0)

    def stop(self, grace: float) -> None:
        """Refuses new calls (503), ends the call softly, unregisters and frees PJSUA2.

        Returns within about `grace` seconds (plus a little for libDestroy); idempotent.
        """
        with self._stop_lock:
            if self._stopped.is_set() or self._thread is None or self._start_error is not None:
                return
            deadline = time.monotonic() + max(grace, 0.0)
            try:
                finished = self._hand_off.submit(lambda: self._begin_shutdown(deadline)).result(
                    timeout=max(grace, 0.0) + 1.0
                )
                finished.result(timeout=max(deadline - time.monotonic(), 0.0))
            except (PhoneError, FutureTimeout):
                log.warning("the call did not end and unregister within the shutdown grace")
            with suppress(Unreachable):
                self._hand_off.post(self._stop_running)
            self._thread.join(timeout=10.0)
            self._stopped.set()
            atexit.unregister(self.stop)

    def _run(self) -> None:
        try:
            self._create_endpoint()
        except Exception as error:
            self._start_error = (
                error
                if isinstance(error, PhoneError)
                else Unreachable(f"cannot start SIP: {error}")
            )
            self._destroy_endpoint()
            self._started.set()
            return
        self._running = True
        self._ready = True
        self._started.set()
        endpoint = self._endpoint
        while self._running:
            endpoint.libHandleEvents(self._hand_off.poll_timeout_ms(IDLE_POLL_MS))
            self._free_retired()
            self._hand_off.run_pending()
            self._free_retired()
        self._ready = False
        del endpoint
        self._hand_off.close()
        self._destroy_endpoint()

    def _create_endpoint(self) -> None:
        settings = self._settings
        self._endpoint = endpoint = pj.Endpoint()
        with _stdout_silenced():
            endpoint.libCreate()
        config = pj.EpConfig()
        config.uaConfig.threadCnt = 0
        config.uaConfig.mainThreadOnly = True
        config.uaConfig.userAgent = "sip-worker"
        self._log_writer = _LogWriter()
        debug = pjsip_log.isEnabledFor(logging.DEBUG)
        config.logConfig.writer = self._log_writer
        config.logConfig.level = 4 if debug else 2
        config.logConfig.consoleLevel = 4 if debug else 2
        config.logConfig.msgLogging = debug
        config.logConfig.decor = 0
        config.medConfig.noVad = True
        endpoint.libInit(config)
        transport_config = pj.TransportConfig()
        transport_config.port = settings.sip_port
        transport_config.boundAddress = settings.sip_host
        if settings.public_address:
            transport_config.publicAddress = settings.public_address
        transport_type = (
            pj.PJSIP_TRANSPORT_TCP if settings.sip_transport == "tcp" else pj.PJSIP_TRANSPORT_UDP
        )
        where = f"{settings.sip_transport} {settings.sip_host}:{settings.sip_port}"
        try:
            self._transport_id = endpoint.transportCreate(transport_type, transport_config)
        except pj.Error as error:
            raise Unreachable(f"cannot bind SIP {where}: {error.reason}") from None
        local_name = endpoint.transportGetInfo(self._transport_id).localName
        self._sip_port = int(str(local_name).rsplit(":", 1)[1])
        wake_config = pj.TransportConfig()
        wake_config.port = 0
        wake_config.boundAddress = "127.0.0.1"
        wake_id = endpoint.transportCreate(pj.PJSIP_TRANSPORT_UDP, wake_config)
        wake_port = int(str(endpoint.transportGetInfo(wake_id).localName).rsplit(":", 1)[1])
        self._hand_off.set_wake_address("127.0.0.1", wake_port)
        endpoint.libStart()
        endpoint.audDevManager().setNullDev()
        for codec, priority in CODEC_PRIORITIES:
            try:
                endpoint.codecSetPriority(codec, priority)
            except pj.Error:
                log.debug("codec %s is not in this PJSUA2 build", codec)
        log.info("SIP %s bound to %s:%d", settings.sip_transport, settings.sip_host, self._sip_port)

    def _destroy_endpoint(self) -> None:
        self._call = None
        self._account = self._registering = None
        self._rejecting.clear()
        self._retired.clear()
        gc.collect()
        if self._endpoint is not None:
            try:
                self._endpoint.libDestroy(pj.PJSUA_DESTROY_NO_NETWORK)
            except pj.Error as error:
                log.warning("libDestroy failed: %s", error.reason)
        self._endpoint = None
        self._log_writer = None

    def _stop_running(self) -> None:
        if self._endpoint is not None:
            self._endpoint.hangupAllCalls()
        for account in (self._registering, self._account):
            if account is not None:
                self._retire_account(account)
        self._account = self._registering = None
        self._running = False

    def _begin_shutdown(self, deadline: float) -> "Future[None]":
        """Refuses new calls, ends the call softly, then unregisters; the Future tells when."""
        self._stopping = True
        done: Future[None] = Future()
        done.set_running_or_notify_cancel()

        def unregister() -> None:
            self._session_interval = None
            self._unregister(self._account, done)

        call = self._call
        if call is None or call.state is None:
            unregister()
            return done
        call.state.on_finished.append(unregister)
        remaining = max(deadline - time.monotonic(), 0.0)
        if not call.state.soft_hangup:
            self._append(SipStatus.soft_hangup_initiated, call.state)
            call.state.soft_hangup = True
        self._hangup_when_audio_done(call, min(self._settings.soft_hangup_timeout, remaining / 2))
        return done

    # ----------------------------------------------------------------- hand-off

    def _on_sip_thread(self, function: Callable[[], "Future[None] | None"]) -> None:
        """Runs `function` on the SIP thread and waits for it and for the Future it may return."""
        if self._stopped.is_set() or self._thread is None:
            raise Unreachable("the phone is not running")
        try:
            pending = self._hand_off.submit(function).result(timeout=HAND_OFF_TIMEOUT)
            if pending is not None:
                pending.result(timeout=HAND_OFF_TIMEOUT)
        except FutureTimeout:
            raise Unreachable("the SIP stack did not answer in time") from None

    def _check_accepting(self) -> None:
        if self._stopping:
            raise Unreachable("the phone is shutting down")

    def _retire(self, thing: object) -> None:
        """Frees a PJSUA2 object after the current callback, still on the SIP thread."""
        self._retired.append(thing)

    def _free_retired(self) -> None:
        """Frees the retired objects, but keeps each disconnected call whose id PJSUA has
        already given to a new call (it reuses ids, even within one poll): freeing it would
        hang that new call up and cut it off from its own object. A kept call costs about a
        kilobyte, and only under floods of INVITEs."""
        if not self._retired:
            return
        live = (self._call, *self._rejecting)
        taken = {call.getId() for call in live if call is not None and not call.disconnected}
        for thing in self._retired:
            if isinstance(thing, _Call) and thing.disconnected and thing.getId() in taken:
                thing.state = None
                thing.__disown__()  # PJSUA2 (C++) now owns it, and never deletes it
        self._retired.clear()

    # ----------------------------------------------------------------- statuses

    def _append(
        self,
        status_type: "SipStatus.StatusType.ValueType",
        call: _CallState | None = None,
        *,
        account_name: str | None = None,
        description: str = "",
        transfer_call_id: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if call is not None and not call.announced:
            # Every status of a call comes after the call's *_call_initiated.
            call.announced = True
            if status_type not in (
                SipStatus.outgoing_call_initiated,
                SipStatus.incoming_call_initiated,
            ):
                initiated = (
                    SipStatus.outgoing_call_initiated
                    if call.outgoing
                    else SipStatus.incoming_call_initiated
                )
                self._append(initiated, call)
        if account_name is None:
            account_name = self._account.name.canonical if self._account is not None else ""
        status = SipStatus(
            account_name=account_name,
            status_type=status_type,
            callee_id=call.callee_id if call is not None else "",
            transfer_call_id=transfer_call_id,
            description=description,
        )
        status.headers.update(headers if headers is not None else call.headers if call else {})
        at_ns = time.time_ns()
        if status_type == SipStatus.outgoing_call_initiated and call and call.requested_ns:
            at_ns = call.requested_ns
        self._last_timestamp_ns = max(at_ns, self._last_timestamp_ns)
        status.timestamp.FromNanoseconds(self._last_timestamp_ns)
        name = SipStatus.StatusType.Name(status_type)
        try:
            self._history.append(status)
        except Exception:
            log.exception("could not record the status %s", name)
        log.info(
            "status %s%s%s",
            name,
            f" callee={status.callee_id}" if status.callee_id else "",
            f" ({description})" if description else "",
        )

    # ----------------------------------------------------------------- accounts

    def register_account(self, account_name: str, password: str) -> None:
        """REGISTERs with digest auth; blocks until the registrar's final answer."""
        name = parse_account_name(account_name)
        if "\0" in password:
            raise InvalidArgument("password contains a NUL character")
        self._on_sip_thread(lambda: self._begin_register_account(name, password))

    def _begin_register_account(self, name: AccountName, password: str) -> "Future[None]":
        self._check_accepting()
        if name.secure:
            raise InvalidArgument(
                f"sips: accounts need SIP over TLS, which this worker does not offer "
                f"(it runs {self._settings.sip_transport})"
            )
        if self._call is not None:
            raise WrongState("a call is in progress; end it before registering")
        current = self._account
        if self._registration_in_progress():
            raise WrongState("a registration is already in progress")
        if (
            self._session_interval is not None
            and current is not None
            and current.name.canonical != name.canonical
        ):
            raise WrongState(
                f"a session for {current.name.canonical} is running; end it before registering "
                "another account"
            )
        account = _Account(self, name)
        try:
            account.create(self._account_config(name, password), True)
        except pj.Error as error:
            self._retire(account)
            raise InvalidArgument(
                f"cannot create the account {name.canonical}: {error.reason}"
            ) from None

        def on_answer(error: PhoneError | None) -> None:
            self._registering = None
            # Accounts are deleted outside their own callbacks.
            if error is not None:
                self._hand_off.post(functools.partial(self._retire_account, account))
                return
            if current is not None and current is not account:
                self._hand_off.post(functools.partial(self._retire_account, current))
            self._account = account
            self._append(SipStatus.registered, account_name=account.name.canonical)
            if self._session_interval is not None:
                # The session's account registered again: the session goes on.
                self._append(SipStatus.ready)

        # create() has sent the REGISTER already. Calls wait until the answer is in: the
        # account they would use may be replaced.
        self._registering = account
        return self._begin_registration(account, True, on_answer, already_sent=True)

    def _registration_in_progress(self) -> bool:
        return self._registering is not None or (
            self._account is not None and self._account.pending is not None
        )

    def _account_config(self, name: AccountName, password: str) -> Any:
        settings = self._settings
        config = pj.AccountConfig()
        config.idUri = name.uri
        config.regConfig.registrarUri = name.registrar_uri
        config.regConfig.registerOnAdd = True
        config.regConfig.retryIntervalSec = 30
        config.sipConfig.transportId = self._transport_id
        # Each account object registers its own Contact: when a RegisterAccount replaces an
        # account, deleting the old one un-REGISTERs only the old binding, not the new one.
        config.sipConfig.contactUriParams = f";line={next(self._serials)}"
        username = settings.auth_username or name.user
        config.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", username, 0, password))
        if settings.outbound_proxy:
            config.sipConfig.proxies.append(settings.outbound_proxy)
        media = config.mediaConfig.transportConfig
        media.port = settings.rtp_port
        if settings.sip_host not in ("0.0.0.0", "::"):
            media.boundAddress = settings.sip_host
        if settings.public_address:
            media.publicAddress = settings.public_address
        elif settings.sip_host not in ("0.0.0.0", "::"):
            media.publicAddress = settings.sip_host
        return config

    def _begin_registration(
        self,
        account: _Account,
        register: bool,
        on_answer: Callable[[PhoneError | None], None] = lambda _: None,
        already_sent: bool = False,
    ) -> "Future[None]":
        """Sends a REGISTER (or un-REGISTER); the Future ends with the registrar's answer."""
        if not already_sent:
            try:
                account.setRegistration(register)
            except pj.Error as error:
                raise Unreachable(f"cannot send REGISTER: {error.reason}") from None
        done: Future[None] = Future()
        done.set_running_or_notify_cancel()
        timeout = self._settings.register_timeout if register else UNREGISTER_TIMEOUT
        timer = self._hand_off.schedule(
            timeout, functools.partial(self._registration_timed_out, account, register)
        )
        account.pending = _Registration(register, done, timer, on_answer)
        return done

    def _complete_registration(self, account: _Account, error: PhoneError | None) -> None:
        pending, account.pending = account.pending, None
        if pending is None:
            return
        pending.timer.cancel()
        try:
            pending.on_answer(error)
        finally:
            if error is None:
                pending.done.set_result(None)
            else:
                pending.done.set_exception(error)

    def _registration_timed_out(self, account: _Account, register: bool) -> None:
        if account.pending is None or account.pending.register != register:
            return
        what = "REGISTER" if register else "un-REGISTER"
        self._complete_registration(
            account,
            Unreachable(f"the registrar of {account.name.canonical} did not answer the {what}"),
        )

    def _on_reg_state(self, account: _Account, code: int, reason: str, expiration: int) -> None:
        pending = account.pending
        if pending is None:
            account.registered = 200 <= code < 300 and expiration > 0
            if not account.registered and account is self._account:
                log.warning("registration of %s lost: %d %s", account.name.canonical, code, reason)
            return
        if 100 <= code < 200:
            return
        succeeded = 200 <= code < 300
        account.registered = succeeded and pending.register
        error: PhoneError | None = None
        if not pending.register:
            if not succeeded:
                log.warning("un-REGISTER of %s: %d %s", account.name.canonical, code, reason)
        elif succeeded:
            pass
        elif code in (408, 480) or code >= 500:
            error = Unreachable(
                f"registrar of {account.name.canonical}: {_sip_code_reason(code, reason)}"
            )
        else:
            error = AuthenticationFailed(
                f"registration of {account.name.canonical} refused: "
                f"{_sip_code_reason(code, reason)}"
            )
        self._complete_registration(account, error)

    def _unregister(self, account: _Account | None, done: "Future[None]") -> None:
        """Un-REGISTERs `account` if it is the registered one; `done` ends with the answer."""
        if account is None or account is not self._account or not account.registered:
            done.set_result(None)
            return
        if account.pending is not None:
            done.set_result(None)
            return
        try:
            self._begin_registration(account, False, lambda _: done.set_result(None))
        except Unreachable as error:
            log.warning("%s", error)
            done.set_result(None)

    def _retire_account(self, account: _Account) -> None:
        if account.pending is not None:
            self._complete_registration(account, Unreachable("the account was deleted"))
        try:
            account.shutdown()
        except pj.Error as error:
            log.warning("could not delete the account %s: %s", account.name.canonical, error.reason)
        self._retire(account)

    # ----------------------------------------------------------------- session

    def start_session(self, account_name: str, auto_answer_interval: int) -> None:
        name = parse_account_name(account_name)
        if auto_answer_interval < 0:
            raise InvalidArgument("auto_answer_interval must be 0 (decline) or more seconds")
        self._on_sip_thread(lambda: self._begin_session(name, auto_answer_interval))

    def _begin_session(self, name: AccountName, interval: int) -> "Future[None] | None":
        self._check_accepting()
        account = self._account
        if account is None or account.name.canonical != name.canonical:
            raise WrongState(f"account {name.canonical} is not registered; call RegisterAccount")
        if self._call is not None:
            raise WrongState("a call is in progress")
        if self._registration_in_progress():
            raise WrongState("a registration is in progress")
        if account.registered:
            self._open_session(interval)
            return None

        def open_after_registration(error: PhoneError | None) -> None:
            if error is None:
                self._append(SipStatus.registered)
                self._open_session(interval)

        return self._begin_registration(account, True, open_after_registration)

    def _open_session(self, interval: int) -> None:
        self._session_interval = interval
        self._append(SipStatus.ready)

    def end_session(self) -> None:
        self._on_sip_thread(self._begin_end_session)

    def _begin_end_session(self) -> "Future[None]":
        account = self._account
        if account is None or (self._session_interval is None and not account.registered):
            raise WrongState("there is no session to end")
        if self._registration_in_progress():
            raise WrongState("a registration is in progress")
        self._session_interval = None
        done: Future[None] = Future()
        done.set_running_or_notify_cancel()

        def unregister() -> None:
            self._append(SipStatus.no_session, account_name=account.name.canonical)
            self._unregister(account, done)

        call = self._call
        if call is None or call.state is None:
            unregister()
        else:
            call.state.on_finished.append(unregister)
            if not call.state.soft_hangup:
                self._append(SipStatus.hard_hangup_initiated, call.state)
            self._hangup(call)
        return done

    # ----------------------------------------------------------------- calls

    def _current_call(self) -> tuple[_Call, _CallState]:
        call = self._call
        if call is None or call.state is None:
            raise WrongState("there is no call")
        return call, call.state

    def _new_call_state(
        self, outgoing: bool, callee_id: str, headers: dict[str, str]
    ) -> _CallState:
        return _CallState(next(self._serials), outgoing, callee_id, headers)

    def start_call(self, callee_id: str, headers: Mapping[str, str]) -> None:
        # The call starts when the worker takes the request, so that its initiated status
        # also covers the hand-off to the SIP thread and the work before the INVITE.
        requested_ns = time.time_ns()
        checked = check_headers(headers, "headers")
        self._on_sip_thread(lambda: self._start_call(callee_id, checked, requested_ns))

    def _start_call(self, callee_id: str, headers: dict[str, str], requested_ns: int) -> None:
        self._check_accepting()
        account = self._account
        if account is None or self._session_interval is None:
            raise WrongState("there is no session; call StartSession first")
        if self._call is not None:
            raise WrongState("a call is already in progress")
        if self._registration_in_progress():
            raise WrongState("a registration is in progress")
        uri = target_uri(callee_id, account.name, "callee_id")
        state = self._new_call_state(True, callee_id, headers)
        state.requested_ns = requested_ns
        call = _Call(self, account, pj.PJSUA_INVALID_ID, state)
        parameters = _call_parameters(headers)
        self._call = call
        # The INVITE goes out first; the status follows (and precedes any other of this call).
        try:
            call.makeCall(uri, parameters)
        except pj.Error as error:
            if not state.finished:
                self._finish_call(
                    call, SipStatus.outgoing_call_failed, f"{error.status} {error.reason}"
                )
            raise Unreachable(f"cannot call {uri}: {error.reason}") from None
        if not state.announced:
            self._append(SipStatus.outgoing_call_initiated, state)

    def _on_incoming_call(self, account: _Account, call_id: int, message: str) -> None:
        if body_is_truncated(message):
            self._reject(_Call(self, account, call_id, None), 400)
            return
        if self._stopping:
            self._reject(_Call(self, account, call_id, None), 503)
            return
        if (
            account is not self._account
            or self._session_interval is None
            or self._registration_in_progress()
        ):
            self._reject(_Call(self, account, call_id, None), 480)
            return
        if self._call is not None:
            log.info("incoming call while busy: 486")
            self._reject(_Call(self, account, call_id, None), 486)
            return
        interval = self._session_interval
        call = _Call(self, account, call_id, None)
        # The From URI as sent: PJSUA2's remoteUri drops the port (RFC 3261 From/To form).
        caller = caller_uri(message) or _address_of(str(call.getInfo().remoteUri))
        state = self._new_call_state(False, caller, custom_headers(message))
        call.state = state
        self._call = call
        self._append(SipStatus.incoming_call_initiated, state)
        if interval == 0:
            self._reject(call, 486)
            return
        ringing = pj.CallOpParam()
        ringing.statusCode = 180
        call.answer(ringing)
        state.timers.append(
            self._hand_off.schedule(interval, functools.partial(self._auto_answer, state.serial))
        )

    def _reject(self, call: _Call, code: int) -> None:
        if self._stopping:
            self._send_rejection(call, code)
        else:
            self._rejecting.append(call)
            self._hand_off.schedule(
                REJECT_DELAY_S, functools.partial(self._send_rejection, call, code)
            )

    def _send_rejection(self, call: _Call, code: int) -> None:
        if call in self._rejecting:
            self._rejecting.remove(call)
        if not call.disconnected:  # the caller may have given up meanwhile
            parameters = pj.CallOpParam()
            parameters.statusCode = code
            try:
                call.hangup(parameters)
            except pj.Error as error:
                log.warning("could not reject an incoming call: %s", error.reason)
        if call.state is None:
            self._retire(call)

    def _auto_answer(self, serial: int) -> None:
        call = self._call
        if call is None or call.state is None or call.state.serial != serial:
            return
        parameters = pj.CallOpParam()
        parameters.statusCode = 200
        try:
            call.answer(parameters)
        except pj.Error as error:
            log.warning("could not answer the incoming call: %s", error.reason)
            self._hangup(call)

    def _on_call_confirmed(self, call: _Call) -> None:
        state = call.state
        if state is None or state.connected or state.finished:
            return
        state.connected = True
        connected = (
            SipStatus.outgoing_call_connected
            if state.outgoing
            else SipStatus.incoming_call_connected
        )
        self._append(connected, state)

    def _on_call_disconnected(self, call: _Call, code: int, reason: str) -> None:
        state = call.state
        if state is None:
            self._retire(call)
            return
        if state.finished:
            return
        if state.connected:
            status_type = (
                SipStatus.outgoing_call_finished
                if state.outgoing
                else SipStatus.incoming_call_finished
            )
        else:
            status_type = (
                SipStatus.outgoing_call_failed if state.outgoing else SipStatus.incoming_call_failed
            )
        self._finish_call(call, status_type, _sip_code_reason(code, reason))

    def _finish_call(
        self, call: _Call, status_type: "SipStatus.StatusType.ValueType", description: str
    ) -> None:
        state = call.state
        assert state is not None
        state.finished = True
        for timer in state.timers:
            timer.cancel()
        self._stop_audio(state)
        self._append(
            status_type, state, description=description, transfer_call_id=state.transfer_id or ""
        )
        if self._call is call:
            self._call = None
        self._retire(call)
        for follow_up in state.on_finished:
            follow_up()
        state.on_finished.clear()

    def _hangup(self, call: _Call) -> None:
        try:
            call.hangup(pj.CallOpParam())
        except pj.Error as error:
            log.warning("hangup failed: %s", error.reason)

    def end_call(self, hard_hangup: bool) -> None:
        self._on_sip_thread(lambda: self._end_call(hard_hangup))

    def _end_call(self, hard_hangup: bool) -> None:
        call, state = self._current_call()
        if hard_hangup:
            self._append(SipStatus.hard_hangup_initiated, state)
            self._hangup(call)
            return
        if state.soft_hangup:
            raise WrongState("a soft hangup is already in progress")
        state.soft_hangup = True
        self._append(SipStatus.soft_hangup_initiated, state)
        self._hangup_when_audio_done(call, self._settings.soft_hangup_timeout)

    def _hangup_when_audio_done(self, call: _Call, bound: float) -> None:
        """Hangs up once the queued audio has played (plus slack), or after `bound` seconds."""
        state = call.state
        assert state is not None
        if state.player is None and not state.queued_wavs:
            self._hangup(call)
            return
        state.timers.append(
            self._hand_off.schedule(bound, functools.partial(self._hangup_serial, state.serial))
        )

    def _hangup_serial(self, serial: int) -> None:
        call = self._call
        if call is not None and call.state is not None and call.state.serial == serial:
            self._hangup(call)

    # ----------------------------------------------------------------- transfer

    def transfer_call(self, transfer_id: str, headers: Mapping[str, str]) -> None:
        checked = check_headers(headers, "headers")
        self._on_sip_thread(lambda: self._transfer_call(transfer_id, checked))

    def _transfer_call(self, transfer_id: str, headers: dict[str, str]) -> None:
        call, state = self._current_call()
        assert self._account is not None
        uri = target_uri(transfer_id, self._account.name, "transfer_id")
        if not state.connected:
            raise WrongState("the call is not connected yet")
        if state.soft_hangup:
            raise WrongState("the call is being hung up")
        if state.transfer_id is not None:
            raise WrongState("a transfer is already in progress")
        parameters = _call_parameters(headers)
        try:
            call.xfer(uri, parameters)
        except pj.Error as error:
            raise Unreachable(f"cannot transfer to {uri}: {error.reason}") from None
        state.transfer_id = transfer_id
        self._append(
            SipStatus.transfer_call_initiated, state, transfer_call_id=transfer_id, headers=headers
        )

    def _on_transfer_status(self, call: _Call, code: int, reason: str, final: bool) -> None:
        state = call.state
        if state is None or state.finished or state.transfer_id is None:
            return
        log.info("transfer to %s: %d %s%s", state.transfer_id, code, reason, " (final)" * final)
        if final and 200 <= code < 300:
            self._hand_off.post(functools.partial(self._hangup_serial, state.serial))
        elif final:
            transfer_id, state.transfer_id = state.transfer_id, None
            connected = (
                SipStatus.outgoing_call_connected
                if state.outgoing
                else SipStatus.incoming_call_connected
            )
            self._append(
                connected,
                state,
                transfer_call_id=transfer_id,
                description=f"transfer failed: {_sip_code_reason(code, reason)}",
            )
        elif code == 100 and reason.lower() == "accepted":
            state.timers.append(
                self._hand_off.schedule(
                    TRANSFER_FINAL_NOTIFY_TIMEOUT,
                    functools.partial(self._hangup_serial, state.serial),
                )
            )

    # ----------------------------------------------------------------- audio

    def play_wav_files(self, wav_files: Sequence[bytes]) -> None:
        if not wav_files:
            raise InvalidArgument("wav_files is empty")
        converted = [playable_wav(data, f"wav_files[{i}]") for i, data in enumerate(wav_files)]
        if sum(map(len, converted)) > MAX_QUEUED_AUDIO_BYTES:
            raise TooLarge(f"wav_files hold more than {MAX_QUEUED_AUDIO_BYTES} bytes of audio")
        files: list[tuple[Path, int]] = []
        try:
            try:
                for wav in converted:
                    handle, name = tempfile.mkstemp(
                        prefix="sip-worker-", suffix=".wav", dir=self._wav_dir
                    )
                    files.append((Path(name), len(wav)))
                    with os.fdopen(handle, "wb") as file:
                        file.write(wav)
            except OSError as error:
                raise TooLarge(f"no room for the audio: {error.strerror}") from None
            self._on_sip_thread(lambda: self._queue_wavs(files))
        except BaseException:
            for path, _ in files:
                path.unlink(missing_ok=True)
            raise

    def _queue_wavs(self, files: list[tuple[Path, int]]) -> None:
        _, state = self._current_call()
        if not state.connected:
            raise WrongState("the call is not connected yet")
        if state.soft_hangup:
            raise WrongState("the call is being hung up")
        size = sum(size for _, size in files)
        if state.queued_bytes + size > MAX_QUEUED_AUDIO_BYTES:
            raise TooLarge(
                f"the call already has {state.queued_bytes} bytes of audio queued; at most "
                f"{MAX_QUEUED_AUDIO_BYTES} may wait"
            )
        state.queued_wavs.extend(files)
        state.queued_bytes += size
        if state.player is None:
            self._play_next(state)

    def _play_next(self, state: _CallState) -> None:
        while state.queued_wavs:
            path, size = state.queued_wavs.popleft()
            player = _Player(self, next(self._serials), size)
            try:
                player.createPlayer(str(path), pj.PJMEDIA_FILE_NO_LOOP)
            except pj.Error as error:
                log.warning("cannot play a WAV file: %s", error.reason)
                state.queued_bytes -= size
                self._retire(player)
                continue
            finally:
                path.unlink(missing_ok=True)
            state.player = player
            if state.audio is not None:
                player.startTransmit(state.audio)
            return

    def _on_player_eof(self, player_serial: int) -> None:
        call = self._call
        if call is None or call.state is None:
            return
        state = call.state
        player = state.player
        if player is None or player.serial != player_serial:
            return
        self._release_player(state)
        self._play_next(state)
        if state.soft_hangup and state.player is None:
            state.timers.append(
                self._hand_off.schedule(
                    SOFT_HANGUP_SLACK, functools.partial(self._hangup_serial, state.serial)
                )
            )

    def _release_player(self, state: _CallState) -> None:
        player, state.player = state.player, None
        if player is None:
            return
        state.queued_bytes -= player.size
        if state.audio is not None:
            with suppress(pj.Error):
                player.stopTransmit(state.audio)
        self._retire(player)

    def _stop_audio(self, state: _CallState) -> None:
        self._release_player(state)
        while state.queued_wavs:
            state.queued_wavs.popleft()[0].unlink(missing_ok=True)
        state.queued_bytes = 0
        state.audio = None

    def _on_call_media_state(self, call: _Call) -> None:
        state = call.state
        if state is None or state.finished:
            return
        state.audio = None
        info = call.getInfo()  # keep it: .media of a SWIG temporary is freed memory
        for media in info.media:
            if media.type == pj.PJMEDIA_TYPE_AUDIO and media.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                state.audio = call.getAudioMedia(media.index)
                break
        if state.audio is not None:
            # The port may be new (re-INVITE): set its level and connect the player again.
            self._apply_mute(state)
            if state.player is not None:
                state.player.startTransmit(state.audio)

    def _apply_mute(self, state: _CallState) -> None:
        """Silences (or restores) everything the call sends, queued audio included.

        The level of the call's conference port is what the far end gets. The player stays
        connected: muted audio plays on unheard, like speech into a muted microphone. (A
        disconnected player is not pulled by the bridge, so it would pause, and a soft hangup
        would wait for audio nobody hears.)
        """
        if state.audio is not None:
            state.audio.adjustRxLevel(0.0 if state.muted else 1.0)

    def mute(self) -> None:
        self._on_sip_thread(lambda: self._set_muted(True))

    def unmute(self) -> None:
        self._on_sip_thread(lambda: self._set_muted(False))

    def _set_muted(self, muted: bool) -> None:
        _, state = self._current_call()
        state.muted = muted
        try:
            self._apply_mute(state)
        except pj.Error as error:
            raise Unreachable(f"cannot change the audio level: {error.reason}") from None
