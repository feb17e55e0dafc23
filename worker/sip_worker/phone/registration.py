"""Registration: the SIP account objects, their REGISTERs and un-REGISTERs, and the answers.

One account is current (the registered one, or the session's); a RegisterAccount creates a
new account object, which replaces the current one once the registrar accepted it. Each
account object registers its own Contact (`;line=N`): deleting a replaced account un-REGISTERs
only its old binding, not the new one. With `no_register` (trunks that trust the worker's
source address) an account has no registrar: it sends no REGISTER, replaces the current one at
once and records nothing. Owner thread only.

A registration that is kept (the session's account, once registered) is REGISTERed again
whenever the registrar refuses or does not answer a refresh: `session_registration_failed`
(the answer in its description) is appended once per reason, the REGISTER goes out again with
the jittered back-off of `registration_retry` (PJSUA's own retries are off, so that there is
one mechanism), and `registered` is appended when the registrar accepts it again. Calls are
not touched meanwhile.
"""

import functools
import itertools
import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

import pjsua2 as pj

from ondewo.sip.sip_pb2 import SipStatus
from sip_worker.errors import AuthenticationFailed, InvalidArgument, PhoneError, Unreachable
from sip_worker.phone.bindings import SipAccount
from sip_worker.phone.hand_off import Timer
from sip_worker.phone.owner import PjOwner, pending_future
from sip_worker.phone.registration_retry import RetryBackoff
from sip_worker.phone.secure_transport import SRTP_USE
from sip_worker.phone.settings import PhoneSettings
from sip_worker.phone.statuses import StatusRecorder
from sip_worker.phone.threads import owner_thread
from sip_worker.phone.trusted_sources import Address, resolve, uri_host
from sip_worker.validation import AccountName, over_tls

log = logging.getLogger(__name__)

# Bound on waiting for the registrar's final answer to a REGISTER, and to an un-REGISTER.
REGISTER_TIMEOUT = 10.0
UNREGISTER_TIMEOUT = 5.0
# PJSUA's earliest refresh after a registration (PJSIP_REGISTER_CLIENT_DELAY_BEFORE_REFRESH).
MIN_REFRESH_MARGIN_S = 5

AnswerHook = Callable[[PhoneError | None], None]


def sip_code_reason(code: int, reason: str) -> str:
    return f"{code} {reason}".strip()


@dataclass(eq=False)
class _Pending:
    """A REGISTER or un-REGISTER awaiting the registrar's final answer."""

    register: bool
    done: "Future[None]"
    timer: Timer
    # Runs on the owner with the outcome before `done` completes, so that the statuses it
    # records are in the history by the time the waiting API call returns.
    on_answer: AnswerHook


class RegistrationListener(Protocol):
    def incoming_call(self, sip: SipAccount, call_id: int, message: str, source: str) -> None: ...
    def subscription_admitted(self, source: str) -> bool: ...
    def account_registered(self) -> None: ...
    def peers_changed(self, peers: frozenset[Address]) -> None: ...


class Account:
    """One PJSUA2 account object and its registration state."""

    def __init__(
        self, sip: SipAccount, name: AccountName, registers: bool, peers: frozenset[Address]
    ) -> None:
        self.sip = sip
        self.name = name
        self.registers = registers  # False: it has no registrar and never sends REGISTER
        # Where its SIP server and outbound proxy send from: the sources it trusts.
        self.peers = peers
        # The registrar holds its binding; without a registrar: from RegisterAccount until
        # EndSession (the API's registration, with nothing sent).
        self.registered = False
        self.pending: _Pending | None = None  # the REGISTER or un-REGISTER in flight
        # REGISTERs again when a refresh fails: from its first success until it is
        # un-REGISTERed or replaced.
        self.kept = False
        self.last_answer = ""  # the registrar's last final answer, e.g. "403 Forbidden"

    @property
    def usable(self) -> bool:
        """A session may run on it: it is registered, or it needs no registration."""
        return self.registered or not self.registers


class Registration:
    """The accounts' room. Its SipAccounts report to it (it outlives them all, so no
    reference cycle ever holds a PJSUA2 object: those must be freed on the owner thread)."""

    def __init__(
        self,
        owner: PjOwner,
        settings: PhoneSettings,
        transport_id: int,
        recorder: StatusRecorder,
        listener: RegistrationListener,
    ) -> None:
        self.listener = listener
        self.current: Account | None = None
        self._registering: Account | None = None  # a new account awaiting its first answer
        self._owner = owner
        self._settings = settings
        self._transport_id = transport_id
        self._recorder = recorder
        self._contact_lines = itertools.count(1)
        self._backoff = RetryBackoff(settings.register_retry_max)
        self._retry: Timer | None = None  # the next REGISTER of the kept account
        # The reason last appended with session_registration_failed; None while registered.
        self._failure: str | None = None

    def account_name(self) -> str:
        return self.current.name.canonical if self.current is not None else ""

    def lost_reason(self) -> str | None:
        """Why the kept registration of the current account is down, while it is."""
        current = self.current
        if current is None or not current.kept or current.registered:
            return None
        return self._failure or "not registered"

    def in_progress(self) -> bool:
        return self._registering is not None or (
            self.current is not None and self.current.pending is not None
        )

    @owner_thread
    def register(
        self, name: AccountName, password: str, record_failure: bool = False
    ) -> "Future[None]":
        """Creates an account for `name` (its REGISTER goes out at once); the Future ends with
        the registrar's answer, or at once without a registrar. The checks of the session and
        call state come first. `record_failure` (the boot session's attempts) appends
        session_registration_failed for a refusal or no answer."""
        previous = self.current
        account = Account(
            SipAccount(self), name, not self._settings.no_register, self._peers_of(name)
        )
        # Its registrar's answer may come before the account is current.
        self.listener.peers_changed(self._peers() | account.peers)
        try:
            account.sip.create(self._account_config(account, password), True)
        except pj.Error as error:
            self._owner.retire(account.sip)
            raise InvalidArgument(
                f"cannot create the account {name.canonical}: {error.reason}"
            ) from None

        if not account.registers:
            account.registered = True
            self._make_current(account, previous)
            done = pending_future()
            done.set_result(None)
            return done

        def on_answer(error: PhoneError | None) -> None:
            self._registering = None
            # Accounts are deleted outside their own callbacks.
            if error is not None:
                if record_failure:
                    self._record_failure(account, account.last_answer)
                self._owner.post(functools.partial(self._retire, account))
                return
            self._make_current(account, previous)
            self._registered_again(account)

        # Calls wait until the answer is in: the account they would use may be replaced.
        self._registering = account
        return self._await_answer(account, True, on_answer)

    def _peers_of(self, name: AccountName) -> frozenset[Address]:
        """The addresses of the account's registrar (without one: its host, where calls go)
        and of the outbound proxy."""
        hosts = [name.host]
        proxy = self._settings.outbound_proxy
        if proxy and (proxy_host := uri_host(proxy)) is not None:
            hosts.append(proxy_host)
        return resolve(hosts)

    def _make_current(self, account: Account, previous: Account | None) -> None:
        if previous is not None and previous is not account:
            self._stop_retrying()
            self._owner.post(functools.partial(self._retire, previous))
        self.current = account
        self.listener.peers_changed(self._peers())

    def _peers(self) -> frozenset[Address]:
        """The peers of the accounts in use: the current one and one registering."""
        accounts = (self.current, self._registering)
        return frozenset().union(*(a.peers for a in accounts if a is not None))

    def _registered_again(self, account: Account) -> None:
        account.kept = True
        self._failure = None
        self._backoff.reset()
        self._recorder.session(SipStatus.registered, account_name=account.name.canonical)
        self.listener.account_registered()

    def _record_failure(self, account: Account, reason: str) -> None:
        """Appends session_registration_failed, unless it already says this."""
        if reason == self._failure:
            return
        self._failure = reason
        log.warning("registration of %s failed: %s", account.name.canonical, reason)
        self._recorder.session(
            SipStatus.session_registration_failed,
            account_name=account.name.canonical,
            description=reason,
        )

    def _registration_lost(self, account: Account) -> None:
        """A refresh or a retry of the kept account failed: say so, try again later."""
        self._record_failure(account, account.last_answer)
        self._stop_retrying()
        delay = self._backoff.next_delay()
        log.info("REGISTER of %s again in %.1f s", account.name.canonical, delay)
        self._retry = self._owner.schedule(delay, functools.partial(self._retry_now, account))

    def _retry_now(self, account: Account) -> None:
        self._retry = None
        if account is not self.current or not account.kept or account.pending is not None:
            return
        try:
            self._send(account, True)
        except Unreachable as error:
            account.last_answer = str(error)
            self._registration_lost(account)

    def _stop_retrying(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None

    @owner_thread
    def register_again(self, account: Account, on_answer: AnswerHook) -> "Future[None]":
        """REGISTERs an existing account again; the Future ends with the answer."""
        self._stop_retrying()
        self._send(account, True)
        return self._await_answer(account, True, on_answer)

    @owner_thread
    def unregister(self, account: Account | None, done: "Future[None]") -> None:
        """Un-REGISTERs `account` if it is the registered one; `done` ends with the answer."""
        if account is not None and account is self.current:
            account.kept = False
            self._stop_retrying()
        if account is not None and not account.registers:
            account.registered = False
            done.set_result(None)
            return
        if (
            account is None
            or account is not self.current
            or not account.registered
            or account.pending is not None
        ):
            done.set_result(None)
            return
        try:
            self._send(account, False)
        except Unreachable as error:
            log.warning("%s", error)
            done.set_result(None)
            return
        self._await_answer(account, False, lambda _: done.set_result(None))

    @owner_thread
    def retire_all(self) -> None:
        self._stop_retrying()
        for account in (self._registering, self.current):
            if account is not None:
                self._retire(account)
        self.current = self._registering = None

    def _account_of(self, sip: SipAccount) -> Account | None:
        for account in (self.current, self._registering):
            if account is not None and account.sip is sip:
                return account
        return None  # one being deleted: nothing waits for it any more

    @owner_thread
    def incoming_call(self, sip: SipAccount, call_id: int, message: str, source: str) -> None:
        self.listener.incoming_call(sip, call_id, message, source)

    @owner_thread
    def subscription_admitted(self, sip: SipAccount, source: str) -> bool:
        return self.listener.subscription_admitted(source)

    @owner_thread
    def registration_changed(
        self, sip: SipAccount, code: int, reason: str, expiration: int
    ) -> None:
        account = self._account_of(sip)
        if account is None:
            return
        if 100 <= code < 200:
            return
        account.last_answer = sip_code_reason(code, reason)
        pending = account.pending
        if pending is None:
            self._refresh_answered(account, code, expiration)
            return
        succeeded = 200 <= code < 300
        account.registered = succeeded and pending.register
        error: PhoneError | None = None
        if not pending.register:
            if not succeeded:
                log.warning("un-REGISTER of %s: %d %s", account.name.canonical, code, reason)
        elif succeeded:
            self._failure = None
            self._backoff.reset()
        elif code in (408, 480) or code >= 500:
            error = Unreachable(
                f"registrar of {account.name.canonical}: {sip_code_reason(code, reason)}"
            )
        else:
            error = AuthenticationFailed(
                f"registration of {account.name.canonical} refused: {sip_code_reason(code, reason)}"
            )
        self._complete(account, error)

    def _refresh_answered(self, account: Account, code: int, expiration: int) -> None:
        """The answer to PJSUA's own refresh, or to a retry of ours."""
        was_registered = account.registered
        account.registered = 200 <= code < 300 and expiration > 0
        if account is not self.current or not account.kept:
            return
        if not account.registered:
            if 200 <= code < 300:
                account.last_answer += " without a binding (expires 0)"
            self._registration_lost(account)
        elif not was_registered:
            self._registered_again(account)

    def _account_config(self, account: Account, password: str) -> Any:
        settings, name = self._settings, account.name
        config = pj.AccountConfig()
        config.idUri = name.uri
        # Without a registrar URI PJSUA never sends a REGISTER (nor an un-REGISTER).
        if account.registers:
            config.regConfig.registrarUri = self._over_transport(name.registrar_uri)
            # 0: PJSUA retries nothing itself; `_registration_lost` does, with back-off.
            config.regConfig.retryIntervalSec = 0
            config.regConfig.timeoutSec = settings.register_expiry
            # The refresh goes out a quarter of the expiry before the binding ends.
            config.regConfig.delayBeforeRefreshSec = max(
                settings.register_expiry // 4, MIN_REFRESH_MARGIN_S
            )
        config.regConfig.registerOnAdd = account.registers
        config.sipConfig.transportId = self._transport_id
        config.sipConfig.contactUriParams = f";line={next(self._contact_lines)}"
        username = settings.auth_username or name.user
        config.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", username, 0, password))
        if settings.outbound_proxy:
            config.sipConfig.proxies.append(self._over_transport(settings.outbound_proxy))
        # Contact and Via rewriting from the registrar's received/rport stay on (PJSUA's
        # default); the SDP's address does not follow it, since the RTP port's mapping is unknown.
        config.natConfig.udpKaIntervalSec = settings.keepalive_interval
        config.mediaConfig.srtpUse = SRTP_USE[settings.srtp]
        # 1: SRTP only where the first hop is TLS, so that SDES keys never go out in clear text
        # (the configuration allows SRTP with --sip-transport tls only, this holds it per call).
        config.mediaConfig.srtpSecureSignaling = 1
        media = config.mediaConfig.transportConfig
        media.port = settings.rtp_port
        if settings.rtp_port_count:
            # PJSUA takes the next pair for every call and wraps to `port` once a pair would
            # start beyond port + portRange: pairs from port to port + count - 2.
            media.portRange = settings.rtp_port_count - 2
        if settings.sip_host not in ("0.0.0.0", "::"):
            media.boundAddress = settings.sip_host
        if settings.public_address:
            media.publicAddress = settings.public_address
        elif settings.sip_host not in ("0.0.0.0", "::"):
            media.publicAddress = settings.sip_host
        return config

    def _over_transport(self, uri: str) -> str:
        return over_tls(uri) if self._settings.sip_transport == "tls" else uri

    @owner_thread
    def _send(self, account: Account, register: bool) -> None:
        try:
            account.sip.setRegistration(register)
        except pj.Error as error:
            raise Unreachable(f"cannot send REGISTER: {error.reason}") from None

    def _await_answer(
        self, account: Account, register: bool, on_answer: AnswerHook
    ) -> "Future[None]":
        done = pending_future()
        timeout = REGISTER_TIMEOUT if register else UNREGISTER_TIMEOUT
        timer = self._owner.schedule(timeout, functools.partial(self._timed_out, account, register))
        account.pending = _Pending(register, done, timer, on_answer)
        return done

    def _complete(self, account: Account, error: PhoneError | None) -> None:
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

    def _timed_out(self, account: Account, register: bool) -> None:
        if account.pending is None or account.pending.register != register:
            return
        what = "REGISTER" if register else "un-REGISTER"
        timeout = REGISTER_TIMEOUT if register else UNREGISTER_TIMEOUT
        account.last_answer = f"no answer to the {what} within {timeout:g} s"
        self._complete(
            account,
            Unreachable(f"the registrar of {account.name.canonical} did not answer the {what}"),
        )

    @owner_thread
    def _retire(self, account: Account) -> None:
        if account.pending is not None:
            self._complete(account, Unreachable("the account was deleted"))
        try:
            account.sip.shutdown()
        except pj.Error as error:
            log.warning("could not delete the account %s: %s", account.name.canonical, error.reason)
        self._owner.retire(account.sip)
