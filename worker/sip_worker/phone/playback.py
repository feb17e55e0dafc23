"""Playback, a call feature: the queue of WAV files PlayWavFiles sends into the call.

The files are written to memory-backed temporary files on the API thread (`stage_wav_files`);
the owner plays them one after the other with a PJSUA2 player each, and frees each player when
its end-of-file arrives (posted from the media thread). Who hears the player is the call's
wiring (`call_audio`); the player plays while someone hears it.
"""

import functools
import logging
import os
import tempfile
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pjsua2 as pj

from sip_worker.errors import InvalidArgument, TooLarge
from sip_worker.phone.bindings import SipPlayer
from sip_worker.phone.owner import PjOwner
from sip_worker.phone.threads import owner_thread
from sip_worker.wav import playable_wav

log = logging.getLogger(__name__)

# Bound on the audio of one call waiting to play (about 11 minutes at 48 kHz): it is held in
# memory-backed temporary files.
MAX_QUEUED_AUDIO_BYTES = 64 * 1024 * 1024
_WAV_DIR = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None


@dataclass(frozen=True)
class StagedWav:
    path: Path
    size: int  # bytes, counted against MAX_QUEUED_AUDIO_BYTES


def stage_wav_files(wav_files: Sequence[bytes]) -> list[StagedWav]:
    """API thread: checks and converts the WAVs and writes them to temporary files."""
    if not wav_files:
        raise InvalidArgument("wav_files is empty")
    converted = [playable_wav(data, f"wav_files[{i}]") for i, data in enumerate(wav_files)]
    if sum(map(len, converted)) > MAX_QUEUED_AUDIO_BYTES:
        raise TooLarge(f"wav_files hold more than {MAX_QUEUED_AUDIO_BYTES} bytes of audio")
    staged: list[StagedWav] = []
    try:
        for wav in converted:
            handle, name = tempfile.mkstemp(prefix="sip-worker-", suffix=".wav", dir=_WAV_DIR)
            staged.append(StagedWav(Path(name), len(wav)))
            with os.fdopen(handle, "wb") as file:
                file.write(wav)
    except OSError as error:
        discard(staged)
        raise TooLarge(f"no room for the audio: {error.strerror}") from None
    return staged


def discard(staged: Sequence[StagedWav]) -> None:
    for wav in staged:
        wav.path.unlink(missing_ok=True)


@dataclass(eq=False)
class _Playing:
    player: SipPlayer
    serial: int
    size: int


class Playback:
    """The queue of one call. Owner thread only."""

    def __init__(self, owner: PjOwner, on_eof_media_thread: Callable[[int], None]) -> None:
        """`on_eof_media_thread(player_serial)` runs on the media thread when a player reaches
        its end: it must only post, and hold nothing of the call (a player must not keep its
        own call alive)."""
        self._owner = owner
        self._on_eof = on_eof_media_thread
        self._queue: deque[StagedWav] = deque()
        self._queued_bytes = 0  # of the queued files and the one playing
        self._playing: _Playing | None = None
        self._serials = 0

    @property
    def idle(self) -> bool:
        return self._playing is None and not self._queue

    @property
    def player(self) -> Any:
        """The pj.AudioMediaPlayer playing now, or None."""
        return self._playing.player if self._playing is not None else None

    @owner_thread
    def enqueue(self, staged: list[StagedWav]) -> None:
        size = sum(wav.size for wav in staged)
        if self._queued_bytes + size > MAX_QUEUED_AUDIO_BYTES:
            raise TooLarge(
                f"the call already has {self._queued_bytes} bytes of audio queued; at most "
                f"{MAX_QUEUED_AUDIO_BYTES} may wait"
            )
        self._queue.extend(staged)
        self._queued_bytes += size
        if self._playing is None:
            self._play_next()

    @owner_thread
    def player_finished(self, player_serial: int) -> None:
        """A player reached its end: the next file plays."""
        if self._playing is None or self._playing.serial != player_serial:
            return
        self._release_player()
        self._play_next()

    @owner_thread
    def release(self) -> None:
        """Drops the queue and the file playing (the call ended, or a client cleared it)."""
        self._release_player()
        discard(self._queue)
        self._queue.clear()
        self._queued_bytes = 0

    def _play_next(self) -> None:
        while self._queue:
            wav = self._queue.popleft()
            self._serials += 1
            serial = self._serials
            player = SipPlayer(functools.partial(self._on_eof, serial))
            try:
                player.createPlayer(str(wav.path), pj.PJMEDIA_FILE_NO_LOOP)
            except pj.Error as error:
                log.warning("cannot play a WAV file: %s", error.reason)
                self._queued_bytes -= wav.size
                self._owner.retire(player)
                continue
            finally:
                wav.path.unlink(missing_ok=True)
            self._playing = _Playing(player, serial, wav.size)
            return

    def _release_player(self) -> None:
        playing, self._playing = self._playing, None
        if playing is None:
            return
        self._queued_bytes -= playing.size
        self._owner.retire(playing.player)
