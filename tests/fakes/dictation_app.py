"""An app with its own dictation (`App(transcribe=...)`), for tests/e2e/test_dictation.py.

`SWITCHBOARD_APP=tests.fakes.dictation_app:app`. Its transcription names the caller and the audio,
so a test can tell it ran instead of the provider; audio that starts with `NOPE` is refused with an
`InvalidRequest`, and `DOWN` raises `Unavailable`, as an app's backend would.
"""

from __future__ import annotations

from agents import Agent

from switchboard.app import App, AudioInput, InvalidRequest, Unavailable


async def transcribe(audio: AudioInput) -> str:
    if audio.data.startswith(b"NOPE"):
        raise InvalidRequest("the app cannot hear this recording")
    if audio.data.startswith(b"DOWN"):
        raise Unavailable("the app's speech backend is down")
    caller = audio.caller
    return f"app heard {len(audio.data)} bytes of {audio.media_type} from {caller.user}@{caller.tenant}"


app = App[None](name="dictation", agent=Agent(name="Listener", instructions="Say hi."), transcribe=transcribe)
