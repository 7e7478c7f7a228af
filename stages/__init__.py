"""One module per pipeline stage: capture -> preprocess -> detect -> track -> record."""
from __future__ import annotations


def build_stage(name: str, cfg, source_id: str | None = None, start_frame: int = 0):
    if name == "capture":
        from stages.capture import CaptureStage

        return CaptureStage(cfg, source_id, start_frame)
    module = __import__(f"stages.{name}", fromlist=["_"])
    cls = {"preprocess": "PreprocessStage", "detect": "DetectStage", "track": "TrackStage", "record": "RecordStage",
           "view": "ViewStage"}[name]
    return getattr(module, cls)(cfg)
