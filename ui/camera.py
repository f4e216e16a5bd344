"""The Classify page's live mode: the camera's video classified frame by frame (``vgg.live``).

The browser sends its camera to this server over WebRTC (``streamlit-webrtc``); each frame goes
through a ``LiveClassifier`` in the video thread and comes back with the top 3 written on it (and
Grad-CAM if chosen). No STUN or TURN server is asked: in a classroom the browser and the server are
on one network, and nothing outside it is contacted. Where the connection cannot be made (no
camera without HTTPS or localhost, a network that blocks it, the package missing), the page says
why and the camera snapshots below it remain.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from ui.lessons import Lessons
from vgg.inference import LoadedModel
from vgg.live import LiveClassifier, frame_model

lessons = Lessons("classify")
RTC_CONFIGURATION: dict[str, Any] = {"iceServers": []}  # local network only (see the module's text)
CLASSIFIER = "_live_classifier"  # st.session_state: (model key, Grad-CAM, LiveClassifier)


@st.cache_resource(max_entries=2, show_spinner="Preparing the model for video…")
def shared_frame_model(key: tuple[str, float], _loaded: LoadedModel) -> LoadedModel:
    """``vgg.live.frame_model`` of the model ``key``, made once and shared by every session."""
    return frame_model(_loaded)


def classifier_for(key: tuple[str, float], loaded: LoadedModel, grad_cam: bool) -> LiveClassifier:
    """This session's classifier for the model ``key`` (made again when the model or Grad-CAM changes)."""
    held = st.session_state.get(CLASSIFIER)
    if held is None or held[0] != key or held[1] != grad_cam:
        held = (key, grad_cam, LiveClassifier(shared_frame_model(key, loaded), grad_cam=grad_cam))
        st.session_state[CLASSIFIER] = held
    return held[2]


def live_ui(key: tuple[str, float], loaded: LoadedModel) -> None:
    """A toggle; when on, the live video with its answers, or why it cannot run here."""
    if not st.toggle("Live from the camera", key="classify_live",
                     help="Classifies the camera's video continuously (WebRTC)."):
        return
    try:
        import av
        from streamlit_webrtc import WebRtcMode, webrtc_streamer
    except ImportError as error:
        st.warning(lessons.text("live_missing", reason=str(error)), icon=":material/videocam_off:")
        return
    grad_cam = st.toggle("Grad-CAM on the video", key="classify_live_cam",
                         help="Where the evidence for the top class is, on every frame (about half the frame rate).")
    classifier = classifier_for(key, loaded, grad_cam)

    def on_frame(frame: av.VideoFrame) -> av.VideoFrame:  # in the video thread: no st.* here
        return av.VideoFrame.from_ndarray(classifier(frame.to_ndarray(format="rgb24")), format="rgb24")

    ctx = webrtc_streamer(key="classify-live", mode=WebRtcMode.SENDRECV, rtc_configuration=RTC_CONFIGURATION,
                          media_stream_constraints={"video": True, "audio": False},
                          video_frame_callback=on_frame, async_processing=True)
    st.caption(lessons.text("live"))
    answer_ui(classifier, playing=ctx.state.playing)


def answer_ui(classifier: LiveClassifier, *, playing: bool) -> None:
    @st.fragment(run_every=1.0 if playing else None)
    def answer() -> None:
        last = classifier.last
        if last is None:
            st.caption("Press **START** and allow the camera: the answers appear on the video and here.")
            return
        label, p = last.top[0]
        st.markdown(f"**Now:** {label} ({p:.0%}) · " + " · ".join(f"{c} {q:.0%}" for c, q in last.top[1:])
                    + f" · {1 / last.seconds:.1f} frames/s")

    answer()
