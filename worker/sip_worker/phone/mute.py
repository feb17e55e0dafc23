"""Mute, a call feature: silences (or restores) everything the call sends.

The level of the call's conference port is what the far end gets. A playing WAV stays
connected: muted audio plays on unheard, like speech into a muted microphone. (A disconnected
player is not pulled by the bridge, so it would pause, and a soft hangup would wait for audio
nobody hears.)
"""

from typing import Any

import pjsua2 as pj

from sip_worker.errors import Unreachable
from sip_worker.phone.threads import owner_thread


class Mute:
    """Owner thread only."""

    def __init__(self) -> None:
        self.muted = False
        self._audio: Any = None

    @owner_thread
    def set(self, muted: bool) -> None:
        self.muted = muted
        try:
            self._apply()
        except pj.Error as error:
            raise Unreachable(f"cannot change the audio level: {error.reason}") from None

    @owner_thread
    def media_changed(self, audio: Any) -> None:
        # The port may be new (re-INVITE): it gets the level again.
        self._audio = audio
        self._apply()

    @owner_thread
    def release(self) -> None:
        self._audio = None

    def _apply(self) -> None:
        if self._audio is not None:
            self._audio.adjustRxLevel(0.0 if self.muted else 1.0)
