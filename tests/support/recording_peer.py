"""A second PJSUA2 endpoint, in its own process, that answers calls and records what it hears.

Tests run it with `RecordingPeer` (below). The process (`python -m tests.support.recording_peer`)
answers every INVITE at once and, while a call's media is up, obeys commands on stdin:
  record PATH   start recording the call's incoming audio to PATH (ends an earlier recording)
  stop          finish the current recording (its WAV header is written)
  play PATH     play the WAV file PATH (16-bit PCM mono) into the call once (ends an earlier one)
  call URI      place a call to URI (from the peer's own address and port)
  hangup        send BYE
  quit          exit
It reports on stdout, one event per line: READY <sip port>, CONFIRMED, MEDIA <where the far
end's SDP says to send RTP, address:port>, RECORDING <path>,
STOPPED <path>, PLAYING <path>, PLAYED <path> (the file reached its end), DTMF <digit> <method>
(a digit the call received; method rfc2833 for an RFC 4733 telephone-event, info for SIP INFO),
DISCONNECTED <code>. With --record-calls DIR each call is recorded whole to DIR/call-<n>.wav,
finished before DISCONNECTED is printed. With --codec ID (such as PCMA/8000 or G722/16000) the
peer offers and accepts that codec only. --host is the address SIP and RTP bind to (127.0.0.1).
With --tls-cert and --tls-key it speaks SIP over TLS (TLS 1.2, presenting that certificate,
checking none), with --srtp optional|mandatory SRTP (SDES) besides or instead of plain RTP.
"""

import argparse
import contextlib
import gc
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _riff_size(path: Path) -> int:
    with path.open("rb") as file:
        header = file.read(8)
    return int.from_bytes(header[4:8], "little") if len(header) == 8 else 0


def run_peer(
    host: str,
    port: int,
    record_calls: Path | None,
    codec: str | None = None,
    tls: tuple[Path, Path] | None = None,
    srtp: str = "off",
) -> None:
    import pjsua2 as pj

    events: queue.SimpleQueue[str] = queue.SimpleQueue()
    dtmf_methods = {pj.PJSUA_DTMF_METHOD_RFC2833: "rfc2833", pj.PJSUA_DTMF_METHOD_SIP_INFO: "info"}

    def emit(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    class Call(pj.Call):  # type: ignore[misc]
        def __init__(self, account: Any, call_id: int) -> None:
            super().__init__(account, call_id)
            self.audio: Any = None
            self.disconnected = False

        def onCallState(self, prm: Any) -> None:
            try:
                info = self.getInfo()
                if info.state == pj.PJSIP_INV_STATE_CONFIRMED:
                    events.put("CONFIRMED")
                elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
                    self.disconnected = True
                    events.put(f"DISCONNECTED {info.lastStatusCode}")
            except Exception as error:
                emit(f"ERROR {error}")

        def onCallMediaState(self, prm: Any) -> None:
            try:
                info = self.getInfo()  # a SWIG temporary would free .media under us
                for media in info.media:
                    if (
                        media.type == pj.PJMEDIA_TYPE_AUDIO
                        and media.status == pj.PJSUA_CALL_MEDIA_ACTIVE
                    ):
                        self.audio = self.getAudioMedia(media.index)
                        remote = self.getStreamInfo(media.index).remoteRtpAddress
                        events.put(f"MEDIA {remote}")
            except Exception as error:
                emit(f"ERROR {error}")

        def onDtmfDigit(self, prm: Any) -> None:
            # Possibly on a media thread (RFC 4733): only hand the digit to the loop.
            try:
                method = dtmf_methods.get(prm.method, str(prm.method))
                events.put(f"DTMF {prm.digit} {method}")
            except Exception as error:
                events.put(f"ERROR {error}")

    class Player(pj.AudioMediaPlayer):  # type: ignore[misc]
        def __init__(self, path: str) -> None:
            super().__init__()
            self.path = path

        def onEof2(self) -> None:
            # On the media clock thread: only hand the end over to the loop.
            events.put(f"PLAYED {self.path}")

    calls: list[Call] = []

    class Account(pj.Account):  # type: ignore[misc]
        def onIncomingCall(self, prm: Any) -> None:
            try:
                call = Call(self, prm.callId)
                calls.append(call)
                answer = pj.CallOpParam()
                answer.statusCode = 200
                call.answer(answer)
            except Exception as error:
                emit(f"ERROR {error}")

    endpoint = pj.Endpoint()
    endpoint.libCreate()
    config = pj.EpConfig()
    config.uaConfig.threadCnt = 0
    config.uaConfig.mainThreadOnly = True
    config.logConfig.consoleLevel = 1
    config.logConfig.level = 1
    config.medConfig.noVad = True
    endpoint.libInit(config)
    transport = pj.TransportConfig()
    transport.port = port
    transport.boundAddress = host
    if tls is not None:
        transport.tlsConfig.method = pj.PJSIP_TLSV1_2_METHOD
        transport.tlsConfig.certFile, transport.tlsConfig.privKeyFile = map(str, tls)
        transport.tlsConfig.verifyServer = False
    transport_type = pj.PJSIP_TRANSPORT_TLS if tls is not None else pj.PJSIP_TRANSPORT_UDP
    transport_id = endpoint.transportCreate(transport_type, transport)
    local_port = int(str(endpoint.transportGetInfo(transport_id).localName).rsplit(":", 1)[1])
    endpoint.libStart()
    endpoint.audDevManager().setNullDev()
    for name in ("speex", "iLBC", "GSM"):
        endpoint.codecSetPriority(name, 0)
    if codec is not None:
        codec_ids = [str(info.codecId) for info in endpoint.codecEnum2()]
        chosen = [each for each in codec_ids if each.lower().startswith(codec.lower())]
        if not chosen:
            raise SystemExit(f"no codec {codec!r} among {codec_ids}")
        for each in codec_ids:
            endpoint.codecSetPriority(each, 255 if each in chosen else 0)
    account_config = pj.AccountConfig()
    suffix = ";transport=tls" if tls is not None else ""
    account_config.idUri = f"sip:peer@{host}:{local_port}{suffix}"
    account_config.sipConfig.transportId = transport_id
    account_config.mediaConfig.srtpUse = {
        "off": pj.PJMEDIA_SRTP_DISABLED,
        "optional": pj.PJMEDIA_SRTP_OPTIONAL,
        "mandatory": pj.PJMEDIA_SRTP_MANDATORY,
    }[srtp]
    account_config.mediaConfig.transportConfig.boundAddress = host
    account_config.mediaConfig.transportConfig.publicAddress = host
    account = Account()
    account.create(account_config, True)

    commands: queue.SimpleQueue[str] = queue.SimpleQueue()

    def read_commands() -> None:
        for line in sys.stdin:
            commands.put(line.strip())
        commands.put("quit")

    threading.Thread(target=read_commands, daemon=True).start()
    emit(f"READY {local_port}")

    recorder: Any = None
    recorder_path = ""
    player: Any = None
    call_count = 0

    def stop_playing() -> None:
        nonlocal player
        if player is None:
            return
        current = calls[-1] if calls else None
        if current is not None and current.audio is not None:
            with contextlib.suppress(pj.Error):
                player.stopTransmit(current.audio)
        player = None
        gc.collect()

    def start_playing(path: str) -> None:
        nonlocal player
        stop_playing()
        current = calls[-1] if calls else None
        if current is None or current.audio is None:
            emit("ERROR no call media to play into")
            return
        new_player = Player(path)
        try:
            new_player.createPlayer(path, pj.PJMEDIA_FILE_NO_LOOP)
            new_player.startTransmit(current.audio)
        except pj.Error as error:
            emit(f"ERROR cannot play {path}: {error.info()}")
            return
        player = new_player
        emit(f"PLAYING {path}")

    def stop_recording() -> None:
        nonlocal recorder
        if recorder is None:
            return
        current = calls[-1] if calls else None
        if current is not None and current.audio is not None:
            with contextlib.suppress(pj.Error):
                current.audio.stopTransmit(recorder)
        recorder = None
        gc.collect()
        # The conference bridge removes the port on its clock thread, and only then does the
        # WAV writer fill in the header's sizes: wait for that.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and _riff_size(Path(recorder_path)) == 0:
            endpoint.libHandleEvents(10)
        emit(f"STOPPED {recorder_path}")

    def start_recording(path: str) -> None:
        nonlocal recorder, recorder_path
        stop_recording()
        current = calls[-1] if calls else None
        if current is None or current.audio is None:
            emit("ERROR no call media to record")
            return
        recorder = pj.AudioMediaRecorder()
        recorder.createRecorder(path)
        current.audio.startTransmit(recorder)
        recorder_path = path
        emit(f"RECORDING {path}")

    def place_call(caller: Any, uri: str) -> None:
        call = Call(caller, pj.PJSUA_INVALID_ID)
        try:
            call.makeCall(uri, pj.CallOpParam(True))
        except pj.Error as error:
            emit(f"ERROR cannot call {uri}: {error.info()}")
            return
        calls.append(call)

    running = True
    while running:
        endpoint.libHandleEvents(10)
        while not events.empty():
            event = events.get()
            if event.startswith("MEDIA") and record_calls is not None and recorder is None:
                call_count += 1
                start_recording(str(record_calls / f"call-{call_count}.wav"))
            if event.startswith("PLAYED"):
                if player is None or event != f"PLAYED {player.path}":
                    continue  # the end of a file a later `play` or the hangup replaced
                stop_playing()
            if event.startswith("DISCONNECTED"):
                stop_recording()
                stop_playing()
                for call in list(calls):
                    if call.disconnected:
                        calls.remove(call)
                        call.audio = None
            emit(event)
        while not commands.empty():
            command, _, argument = commands.get().partition(" ")
            if command == "record":
                start_recording(argument)
            elif command == "stop":
                stop_recording()
            elif command == "play":
                start_playing(argument)
            elif command == "call":
                place_call(account, argument)
            elif command == "hangup":
                endpoint.hangupAllCalls()
            elif command == "quit":
                running = False
    stop_recording()
    stop_playing()
    endpoint.hangupAllCalls()
    deadline = time.monotonic() + 1.0
    while calls and time.monotonic() < deadline:
        endpoint.libHandleEvents(10)
        calls[:] = [call for call in calls if not call.disconnected]
    for call in calls:
        call.audio = None
    calls.clear()
    account.shutdown()
    del account
    gc.collect()
    endpoint.libDestroy(pj.PJSUA_DESTROY_NO_NETWORK)
    sys.stdout.flush()
    os._exit(0)


class RecordingPeer:
    """Runs the peer process; `uri` is where to call it. `stop()` kills it (use in teardown)."""

    def __init__(
        self,
        workdir: Path,
        record_calls: bool = False,
        codec: str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        prefix: Sequence[str] = (),
        tls: tuple[Path, Path] | None = None,
        srtp: str = "off",
    ) -> None:
        """`codec` (such as "PCMA/8000" or "G722/16000"): the only codec the peer takes.
        `host` and `port` (0: any free one) are where it binds SIP; `prefix` goes before the
        command (such as `ip netns exec NAME`, to run it in another network namespace).
        `tls` (certificate, key): SIP over TLS; `srtp`: off, optional or mandatory."""
        self.workdir = workdir
        self.host = host
        self.tls = tls is not None
        workdir.mkdir(parents=True, exist_ok=True)
        command = [*prefix, sys.executable, "-m", "tests.support.recording_peer"]
        command += ["--host", host, "--port", str(port)]
        if record_calls:
            command += ["--record-calls", str(workdir)]
        if codec is not None:
            command += ["--codec", codec]
        if tls is not None:
            command += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
        command += ["--srtp", srtp]
        self.stderr_path = workdir / "peer-stderr.log"
        self._lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.seen: list[str] = []
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                cwd=Path(__file__).resolve().parents[2],
            )
        threading.Thread(target=self._read, daemon=True).start()
        ready = self.wait_for("READY")
        self.port = int(ready.split()[1])

    @property
    def uri(self) -> str:
        suffix = ";transport=tls" if self.tls else ""
        return f"sip:peer@{self.host}:{self.port}{suffix}"

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.strip())

    def wait_for(self, prefix: str, timeout: float = 20.0) -> str:
        """Waits for the next event line starting with `prefix`; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"peer said no {prefix!r} within {timeout} s (saw {self.seen}); stderr:\n"
                    + self.stderr_path.read_text(errors="replace")
                ) from None
            self.seen.append(line)
            if line.startswith(prefix):
                return line

    def command(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def record(self, path: Path, seconds: float) -> Path:
        """Records the call's incoming audio for about `seconds` into `path`."""
        self.command(f"record {path}")
        self.wait_for("RECORDING")
        time.sleep(seconds)
        self.command("stop")
        self.wait_for("STOPPED")
        return path

    def play(self, path: Path, wait: bool = True, timeout: float = 20.0) -> None:
        """Plays the WAV file at `path` into the call; with `wait`, until its end."""
        self.command(f"play {path}")
        self.wait_for(f"PLAYING {path}")
        if wait:
            self.wait_for(f"PLAYED {path}", timeout=timeout)

    def wait_for_digits(self, count: int, timeout: float = 10.0) -> list[tuple[str, str]]:
        """The next `count` digits the peer received, as (digit, "rfc2833" or "info")."""
        deadline = time.monotonic() + timeout
        digits: list[tuple[str, str]] = []
        while len(digits) < count:
            line = self.wait_for("DTMF ", timeout=max(0.0, deadline - time.monotonic()))
            _, digit, method = line.split()
            digits.append((digit, method))
        return digits

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                self.command("quit")
                self.process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait(timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--record-calls", type=Path)
    parser.add_argument("--codec", help="the only codec to offer and accept, e.g. PCMA/8000")
    parser.add_argument("--tls-cert", type=Path, help="SIP over TLS with this certificate")
    parser.add_argument("--tls-key", type=Path, help="the private key of --tls-cert")
    parser.add_argument("--srtp", choices=("off", "optional", "mandatory"), default="off")
    arguments = parser.parse_args()
    tls = (arguments.tls_cert, arguments.tls_key) if arguments.tls_cert else None
    run_peer(
        arguments.host,
        arguments.port,
        arguments.record_calls,
        arguments.codec,
        tls,
        arguments.srtp,
    )


if __name__ == "__main__":
    main()
