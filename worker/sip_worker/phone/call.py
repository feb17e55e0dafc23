"""The active call: its phase, its features, and what its SIP events do to it.

    SETTING_UP -> CONNECTED <-> TRANSFERRING
         \\            \\            \\
          +------------+------------+--> HANGING_UP --> FINISHED

Any phase may end in FINISHED (the far end hangs up, the call fails, the far end sends no
media for the media timeout). Features (playback, mute, transfer, live audio, the media
timeout) are each in their own module; the call tells them when its audio port changes and
when it ends (`release`), and has the live-audio feature rewire who hears whom after
anything that changes it. Owner thread only. Nothing here holds a reference to the
call: timers, players and streams reach it through `CallServices`, by serial, so that a
finished call's PJSUA2 object is freed on the owner as soon as it is retired.
"""

import enum
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

import pjsua2 as pj

from ondewo.sip.sip_pb2 import SipCallAudioEndReason, SipStatus
from sip_contract.status import CallStep
from sip_worker.errors import PhoneError, Unreachable, WrongState
from sip_worker.phone.audio_tap import AudioTap, EndReason, StreamSettings
from sip_worker.phone.bindings import SipCall, answer_parameters, request_parameters
from sip_worker.phone.call_audio import CallAudio, PortPool
from sip_worker.phone.dtmf import DtmfSender
from sip_worker.phone.hand_off import Timer
from sip_worker.phone.media_timeout import MediaTimeout
from sip_worker.phone.mute import Mute
from sip_worker.phone.owner import PjOwner
from sip_worker.phone.playback import Playback, StagedWav
from sip_worker.phone.registration import sip_code_reason
from sip_worker.phone.statuses import CallIdentity, StatusRecorder
from sip_worker.phone.threads import owner_thread
from sip_worker.phone.transfer import FINAL_NOTIFY_TIMEOUT, Transfer

log = logging.getLogger(__name__)

# Slack between the end of the last queued audio and the BYE, for the far end's jitter buffer.
SOFT_HANGUP_SLACK = 0.2
# Redirects (3xx) a call follows before it fails with the last one: a bound on loops.
MAX_REDIRECTS = 5


class CallPhase(enum.Enum):
    SETTING_UP = "setting up"
    CONNECTED = "connected"
    TRANSFERRING = "transferring"
    HANGING_UP = "hanging up"
    FINISHED = "finished"


class CallFeature(Protocol):
    def release(self) -> None:
        """The call ended: let go of every PJSUA2 object and file."""


CallAction = Callable[["ActiveCall"], None]


@dataclass(frozen=True)
class CallServices:
    """What a call needs of the phone; it outlives every call."""

    owner: PjOwner
    recorder: StatusRecorder
    # later(delay, serial, action): action(call) on the owner after delay, if call `serial` is
    # still the active call. Owner thread only.
    later: Callable[[float, int, CallAction], Timer]
    # post(serial, action): the same, soon; callable from any thread, media threads too.
    post: Callable[[int, CallAction], None]
    ports: PortPool  # the live-audio ports, which outlive calls
    media_timeout: float  # seconds without media from the far end before the BYE; 0: never


class ActiveCall:
    def __init__(self, services: CallServices, sip: SipCall, identity: CallIdentity) -> None:
        self.sip = sip
        self.identity = identity
        self.phase = CallPhase.SETTING_UP
        self.connected = False  # it was answered (it may be hanging up since)
        self.playback = Playback(
            services.owner, functools.partial(_player_ended, services.post, identity.serial)
        )
        self.mute = Mute()
        self.transfer = Transfer()
        self.audio = CallAudio(services.ports)
        self.dtmf = DtmfSender()
        self.media_timeout = MediaTimeout(
            services.media_timeout,
            functools.partial(_check_media_later, services.later, identity.serial),
        )
        self.features: tuple[CallFeature, ...] = (
            self.audio,
            self.mute,
            self.playback,
            self.dtmf,
            self.media_timeout,
        )
        # Run once the call finished, in order (the session frees its line first).
        self.on_finished: list[Callable[[], None]] = []
        self._services = services
        self._timers: list[Timer] = []
        self._dialing = False
        self._ended_while_dialing = ""  # the SIP code and reason, if so
        self._hang_up_cause = ""  # the finished status's description, if not the SIP one
        self._redirects: list[str] = []  # the targets of the redirects followed, in order

    @property
    def serial(self) -> int:
        return self.identity.serial

    # ------------------------------------------------------------ requests

    @owner_thread
    def dial(self, uri: str, headers: Mapping[str, str]) -> None:
        """Sends the INVITE; the initiated status follows it (and precedes every other)."""
        self._dialing = True
        try:
            self.sip.makeCall(uri, request_parameters(headers))
        except pj.Error as error:
            failure = Unreachable(f"cannot call {uri}: {error.reason}")
            self.finish(
                self._ended_while_dialing or f"{error.status} {error.reason}",
                exception_name=type(failure).__name__,
            )
            raise failure from None
        finally:
            self._dialing = False
        if self._ended_while_dialing:
            self.finish(self._ended_while_dialing)
        else:
            self.learn_sip_call_id()
            self._record(CallStep.INITIATED)

    @owner_thread
    def learn_sip_call_id(self) -> None:
        """The call's statuses carry its SIP Call-ID from now on."""
        self.identity = replace(self.identity, sip_call_id=str(self.sip.getInfo().callIdString))

    @owner_thread
    def ring(self, auto_answer_after: float) -> None:
        self.sip.answer(answer_parameters(180))
        self._later(auto_answer_after, ActiveCall.answer)

    @owner_thread
    def answer(self) -> None:
        try:
            self.sip.answer(answer_parameters(200))
        except pj.Error as error:
            log.warning("could not answer the incoming call: %s", error.reason)
            self.hang_up()

    @owner_thread
    def refuse(self, code: int) -> None:
        if not self.sip.disconnected:  # the caller may have given up meanwhile
            try:
                self.sip.hangup(answer_parameters(code))
            except pj.Error as error:
                log.warning("could not reject an incoming call: %s", error.reason)

    @owner_thread
    def end(self, hard: bool, soft_bound: float) -> None:
        """EndCall: BYE now (hard), or once the queued audio has played (soft)."""
        if hard:
            self._record(SipStatus.hard_hangup_initiated)
            self.phase = CallPhase.HANGING_UP
            self.hang_up()
            return
        if self.phase is CallPhase.HANGING_UP:
            raise WrongState("the call is already being hung up")
        self.hang_up_softly(soft_bound)

    @owner_thread
    def hang_up_softly(self, bound: float, description: str = "") -> None:
        """Hangs up once the queued audio has played (plus slack), or after `bound` seconds;
        `description` (on its status) says why, when not the API's EndCall."""
        if self.phase is not CallPhase.HANGING_UP:
            self.phase = CallPhase.HANGING_UP
            self._record(SipStatus.soft_hangup_initiated, description=description)
        if self.playback.idle:
            self.hang_up()
        else:
            self._later(bound, ActiveCall.hang_up)

    @owner_thread
    def hang_up_now(self) -> None:
        """The session ends: BYE at once (a soft hangup under way says so already)."""
        if self.phase is not CallPhase.HANGING_UP:
            self._record(SipStatus.hard_hangup_initiated)
            self.phase = CallPhase.HANGING_UP
        self.hang_up()

    @owner_thread
    def hang_up(self) -> None:
        try:
            self.sip.hangup(pj.CallOpParam())
        except pj.Error as error:
            log.warning("hangup failed: %s", error.reason)

    @owner_thread
    def check_media(self) -> None:
        """The media timeout's periodic check: a silent far end is hung up."""
        if self.phase is CallPhase.HANGING_UP or not self.media_timeout.expired(self.sip):
            return
        log.info("hanging up: %s", self.media_timeout.description)
        self._hang_up_cause = self.media_timeout.description
        self.phase = CallPhase.HANGING_UP
        self.hang_up()

    @owner_thread
    def start_transfer(self, uri: str, transfer_id: str, headers: Mapping[str, str]) -> None:
        self._check_connected()
        if self.phase is CallPhase.TRANSFERRING:
            raise WrongState("a transfer is already in progress")
        self.transfer.start(self.sip, uri, transfer_id, headers)
        self.phase = CallPhase.TRANSFERRING
        self._record(
            SipStatus.transfer_call_initiated, transfer_call_id=transfer_id, headers=headers
        )

    @owner_thread
    def play(self, staged: list[StagedWav]) -> None:
        self._check_connected()
        self.playback.enqueue(staged)
        self._rewire()

    @owner_thread
    def set_muted(self, muted: bool) -> None:
        self.mute.set(muted)
        self._rewire()

    @owner_thread
    def open_audio(self, settings: StreamSettings) -> AudioTap:
        self._check_connected()
        if self.phase is CallPhase.TRANSFERRING:
            raise WrongState("the call is being transferred")
        tap = self.audio.open(
            settings,
            self.serial,
            functools.partial(_stream_stalled, self._services.post, self.serial),
            self._schedule_stream_end,
        )
        self._rewire()
        return tap

    @owner_thread
    def close_audio(self, serial: int, reason: EndReason, detail: str = "") -> None:
        if self.audio.close(serial, reason, detail):
            self._rewire()

    @owner_thread
    def clear_playback(self) -> None:
        """Barge-in: the WAV queue goes (the TALK audio is the stream's own to clear)."""
        self.playback.release()
        self._rewire()

    @owner_thread
    def send_dtmf(self, digits: str, sip_info: bool, duration_ms: int) -> None:
        """Queues the digits; the first goes at once (its refusal is the caller's error)."""
        self._check_connected()
        self.dtmf.enqueue(digits, sip_info, duration_ms)
        if not self.dtmf.busy:
            self._send_next_digit()

    @owner_thread
    def _send_next_digit(self) -> None:
        after_ms = self.dtmf.send_next(self.sip)
        if after_ms is not None:
            self._later(after_ms / 1000, ActiveCall._send_queued_digit)

    def _send_queued_digit(self) -> None:
        try:
            self._send_next_digit()
        except PhoneError as error:
            log.warning("DTMF: %s; the digits queued after it are dropped", error)

    def _schedule_stream_end(self, seconds: float, stream_serial: int) -> Timer:
        timer = self._services.later(
            seconds,
            self.serial,
            functools.partial(
                ActiveCall.close_audio,
                serial=stream_serial,
                reason=SipCallAudioEndReason.SIP_CALL_AUDIO_END_REASON_MAX_DURATION,
            ),
        )
        self._timers.append(timer)
        return timer

    def _check_connected(self) -> None:
        if not self.connected:
            raise WrongState("the call is not connected yet")
        if self.phase is CallPhase.HANGING_UP:
            raise WrongState("the call is being hung up")

    def _rewire(self) -> None:
        self.audio.wire(self.playback.player, self.mute.muted)

    # ------------------------------------------------------------ events

    @owner_thread
    def redirected(self, target: str, trusted: bool) -> bool:
        """A 3xx to `target` (`sip:user@host:port`) while the call is set up: whether to follow
        it (PJSUA sends the INVITE there, with the account's credentials for a challenge).
        A redirect not followed ends the call; PJSUA reports that as 487, so the status says
        why instead."""
        if self.phase is not CallPhase.SETTING_UP:
            return False
        if not trusted or len(self._redirects) >= MAX_REDIRECTS:
            why = "an untrusted host" if not trusted else f"after {MAX_REDIRECTS} redirects"
            self._hang_up_cause = f"redirected to {target}: not followed ({why})"
            log.info("%s", self._hang_up_cause)
            return False
        log.info("following the redirect to %s", target)
        self._redirects.append(target)
        return True

    @owner_thread
    def confirmed(self) -> None:
        if self.connected or self.phase is CallPhase.FINISHED:
            return
        self.connected = True
        if self.phase is CallPhase.SETTING_UP:
            self.phase = CallPhase.CONNECTED
        redirect = f"redirected to {self._redirects[-1]}" if self._redirects else ""
        self._record(CallStep.CONNECTED, description=redirect)
        self.media_timeout.connected(self.sip)

    @owner_thread
    def disconnected(self, code: int, reason: str) -> None:
        if self._dialing:
            # PJSUA ends a call it could not send inside makeCall: `dial` finishes it, with
            # the error it raises.
            self._ended_while_dialing = sip_code_reason(code, reason)
        elif self.phase is not CallPhase.FINISHED:
            self.finish(self._hang_up_cause or sip_code_reason(code, reason))

    @owner_thread
    def media_changed(self) -> None:
        if self.phase is CallPhase.FINISHED:
            return
        audio = None
        sendrecv_index = None  # the far end is expected to send RTP on it
        info = self.sip.getInfo()  # keep it: .media of a SWIG temporary is freed memory
        for media in info.media:
            if media.type == pj.PJMEDIA_TYPE_AUDIO and media.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                audio = self.sip.getAudioMedia(media.index)
                if media.dir == pj.PJMEDIA_DIR_ENCODING_DECODING:
                    sendrecv_index = int(media.index)
                break
        self.mute.media_changed(audio)
        self.audio.media_changed(audio)
        self._rewire()
        self.media_timeout.media_changed(self.sip, sendrecv_index)

    @owner_thread
    def transfer_progress(self, code: int, reason: str, final: bool) -> None:
        target = self.transfer.target
        if self.phase is CallPhase.FINISHED or target is None:
            return
        outcome = self.transfer.progress(code, reason, final)
        if outcome.leave:
            self._later(0.0, ActiveCall.hang_up)
        elif outcome.failed:
            if self.phase is CallPhase.TRANSFERRING:
                self.phase = CallPhase.CONNECTED
            self._record(
                CallStep.CONNECTED,
                transfer_call_id=target,
                description=f"transfer failed: {outcome.failed}",
            )
        elif outcome.await_final:
            self._later(FINAL_NOTIFY_TIMEOUT, ActiveCall.hang_up)

    @owner_thread
    def dtmf_received(self, digit: str, duration_ms: int) -> None:
        self.audio.dtmf(digit, duration_ms)

    @owner_thread
    def player_finished(self, player_serial: int) -> None:
        self.playback.player_finished(player_serial)
        self._rewire()
        if self.phase is CallPhase.HANGING_UP and self.playback.idle:
            self._later(SOFT_HANGUP_SLACK, ActiveCall.hang_up)

    @owner_thread
    def finish(self, description: str, exception_name: str = "") -> None:
        """The call ended: FINISHED if it was connected, else FAILED."""
        self.phase = CallPhase.FINISHED
        for timer in self._timers:
            timer.cancel()
        if self.transfer.left:
            self.audio.end_all(SipCallAudioEndReason.SIP_CALL_AUDIO_END_REASON_CALL_TRANSFERRED)
        for feature in self.features:
            feature.release()
        self._record(
            CallStep.FINISHED if self.connected else CallStep.FAILED,
            description=description,
            transfer_call_id=self.transfer.target or "",
            exception_name=exception_name,
        )
        self._services.owner.retire(self.sip)
        for follow_up in self.on_finished:
            follow_up()
        self.on_finished.clear()

    def _later(self, delay: float, action: CallAction) -> None:
        self._timers.append(self._services.later(delay, self.serial, action))

    def _record(self, what: "CallStep | SipStatus.StatusType.ValueType", **fields: Any) -> None:
        self._services.recorder.call(
            self.identity,
            what,
            call_audio_streams=self.audio.count,
            sip_response_code=self.transfer.response_code,
            **fields,
        )


def _player_ended(post: Callable[[int, CallAction], None], call: int, player: int) -> None:
    """On the media thread: a player of call `call` reached its end."""
    post(call, functools.partial(ActiveCall.player_finished, player_serial=player))


def _check_media_later(
    later: Callable[[float, int, CallAction], Timer], call: int, delay: float
) -> Timer:
    """Schedules the media timeout's check of call `call` (by serial: no reference to it)."""
    return later(delay, call, ActiveCall.check_media)


def _stream_stalled(post: Callable[[int, CallAction], None], call: int, stream: int) -> None:
    """On the media thread: the client of stream `stream` stopped reading."""
    post(
        call,
        functools.partial(
            ActiveCall.close_audio,
            serial=stream,
            reason=SipCallAudioEndReason.SIP_CALL_AUDIO_END_REASON_STALLED,
        ),
    )
