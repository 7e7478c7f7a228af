"""Track + annotate: ByteTrack per stream (supervision), boxes and labels drawn for the operator."""
from __future__ import annotations

import numpy as np
import supervision as sv

from pipeline.config import PipelineConfig
from pipeline.messages import FrameMessage
from pipeline.stage import Stage


def to_sv_detections(dets: np.ndarray) -> sv.Detections:
    return sv.Detections(xyxy=dets[:, :4].astype(np.float32), confidence=dets[:, 4].astype(np.float32),
                         class_id=dets[:, 5].astype(int))


def match_track_ids(dets: np.ndarray, tracked: sv.Detections) -> np.ndarray:
    """Track id per input detection (-1 where ByteTrack did not keep it): detections stay untouched
    so downstream consumers (recording, scoring) see exactly what the detector said."""
    ids = np.full(len(dets), -1, dtype=np.int64)
    for box, track_id in zip(tracked.xyxy, tracked.tracker_id):
        hit = np.flatnonzero(np.all(np.abs(dets[:, :4] - box) < 1e-3, axis=1))
        if len(hit):
            ids[hit[0]] = track_id
    return ids


class TrackStage(Stage):
    name = "track"
    input_key = "track_in"
    output_key = "record_in"

    def __init__(self, cfg: PipelineConfig):
        super().__init__(cfg)
        self.settings = cfg.stages.track
        self.trackers: dict[str, sv.ByteTrack] = {}
        self.last_index: dict[str, int] = {}
        self.box_annotator = sv.BoxAnnotator(thickness=1)
        self.label_annotator = sv.LabelAnnotator(text_scale=0.4, text_padding=3)

    def _tracker(self, stream_id: str) -> sv.ByteTrack:
        if stream_id not in self.trackers:
            s = self.settings
            self.trackers[stream_id] = sv.ByteTrack(
                track_activation_threshold=s.track_activation_threshold, lost_track_buffer=s.lost_track_buffer,
                minimum_matching_threshold=s.minimum_matching_threshold,
                minimum_consecutive_frames=s.minimum_consecutive_frames)
        return self.trackers[stream_id]

    def process(self, msg: FrameMessage) -> list[FrameMessage]:
        tracker = self._tracker(msg.stream_id)
        gap = msg.frame_index - self.last_index.get(msg.stream_id, msg.frame_index - 1)
        for _ in range(min(gap - 1, self.settings.lost_track_buffer)):  # frames dropped upstream age the tracks
            tracker.update_with_detections(sv.Detections.empty())
        self.last_index[msg.stream_id] = msg.frame_index
        dets = msg.detections if msg.detections is not None else np.zeros((0, 6), np.float32)
        tracked = tracker.update_with_detections(to_sv_detections(dets))
        msg.track_ids = match_track_ids(dets, tracked)
        if self.settings.annotate:
            msg.buffers["annotated"] = self._annotate(msg, tracked)
        return [msg]

    def _annotate(self, msg: FrameMessage, tracked: sv.Detections) -> np.ndarray:
        names = msg.meta.get("class_names") or []
        labels = [f"#{tid} {names[c] if c < len(names) else c} {conf:.2f}"
                  for tid, c, conf in zip(tracked.tracker_id, tracked.class_id, tracked.confidence)]
        frame = self.box_annotator.annotate(msg.image.copy(), tracked)
        return self.label_annotator.annotate(frame, tracked, labels=labels)

    def end_stream(self, stream_id: str) -> list[FrameMessage]:
        self.trackers.pop(stream_id, None)
        self.last_index.pop(stream_id, None)
        return []
