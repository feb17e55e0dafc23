"""The SIP user agent over PJSUA2: one account, one call at a time.

Who is who (one module each):
- `facade`: the thread-safe `Phone` the servicer calls; checks input, waits for the owner.
- `owner`: the PJSUA2 owner thread and its endpoint (`endpoint`): submit, post, schedule,
  retire; `hand_off` is its queue; `threads` guards that PJSUA2 is touched on it alone.
- `bindings`: thin PJSUA2 subclasses that turn callbacks into plain events.
- `registration`: accounts and REGISTERs. `session`: the line (auto-answer, refusals, calls).
- `call`: the active call and its phase; its features `playback`, `mute`, `transfer`,
  `media_timeout` (a silent far end is hung up) and `call_audio` (live-audio streams, who
  hears whom), whose `audio_tap` holds the buffers the media thread shares with the gRPC
  stream.
- `statuses`: the recorder that orders and timestamps every status.
"""

from sip_worker.phone.facade import Phone
from sip_worker.phone.settings import PhoneSettings

__all__ = ["Phone", "PhoneSettings"]
