"""Track stage (stages/track.py) and its drawing (stages/annotate.py): real TrackStage objects fed
FrameMessages with hand-made detections (the detector's output format), a real ZeroMQ subscriber on
the events endpoint, real JPEG thumbnails."""
from __future__ import annotations

import base64
import json
import time

import cv2
import numpy as np
import pytest
import zmq

from pipeline.runtime.config import config_from_dict, connect_side
from pipeline.offline.data.dataset import CLASSES
from pipeline.runtime.messages import FrameMessage
from pipeline.runtime.transport import open_socket
from pipeline.runtime.zones import REQUIRE_OUTLINE_BGR
from stages.annotate import REFERENCE_HEIGHT, UNTRACKED_COLOR, ui_scale
from stages.track import TrackStage
from tests.conftest import fill_disk

DRONE, BIRD = CLASSES.index("drone"), CLASSES.index("bird")


def make_stage(tmp_path, zones=(), **track):
    """A TrackStage of one source, cam0, with ``zones`` (its sources[].zones entries)."""
    source = {"id": "cam0", "uri": "unused.mp4", "zones": list(zones)}
    cfg = config_from_dict({"sources": [source], "output_dir": str(tmp_path / "out"),
                            "transport": {"ipc_dir": str(tmp_path / "ipc")}, "stages": {"track": track}},
                           check_files=False)
    return cfg, TrackStage(cfg)


def frame(index: int, dets: list, size=(640, 512), stream_id="cam0") -> FrameMessage:
    image = np.full((size[1], size[0], 3), 110, np.uint8)
    for x1, y1, x2, y2, *_ in dets:  # a dark speck where each target is, for thumbnails and insets
        image[int(y1):int(y2), int(x1):int(x2)] = 20
    return FrameMessage(stream_id, index, index / 30, time.time(), {"image": image},
                        np.array(dets, np.float32).reshape(-1, 6), meta={"class_names": list(CLASSES)})


def small_target(index: int, x0=100.0, y0=200.0, vx=3.0, vy=0.0, size=8.0, score=0.8, cls=DRONE) -> list:
    x, y = x0 + vx * index, y0 + vy * index
    return [x, y, x + size, y + size, score, cls]


def test_tracks_survive_a_frame_drop_and_detections_stay_untouched(tmp_path):
    _, stage = make_stage(tmp_path)
    try:
        ids_before, ids_after = set(), set()
        for i in [*range(0, 20), *range(26, 40)]:  # frames 20-25 dropped: the target moves 18 px (> 2 sizes)
            dets = [small_target(i), small_target(i, x0=400, y0=100, vx=0, vy=2, size=12, score=0.6, cls=BIRD)]
            msg = frame(i, dets)
            sent = msg.detections.copy()
            out = stage.process(msg)[0]
            np.testing.assert_array_equal(out.detections, sent)  # offline scoring reads these back
            assert out.track_ids.shape == (2,)
            if 5 <= i < 20:
                ids_before.add(int(out.track_ids[0]))
            if i >= 26:
                ids_after.add(int(out.track_ids[0]))
        assert len(ids_before) == 1 and ids_before == ids_after and -1 not in ids_before
        assert stage.counters["frames_missing"] == 6
    finally:
        stage.close()


def test_class_vote_keeps_a_drone_a_drone(tmp_path):
    _, stage = make_stage(tmp_path)
    try:
        voted = []
        for i in range(30):
            flicker = i % 4 == 3  # every fourth frame the detector calls the drone a bird
            dets = [small_target(i, score=0.7 if flicker else 0.8, cls=BIRD if flicker else DRONE)]
            out = stage.process(frame(i, dets))[0]
            if out.track_ids[0] >= 0:
                voted.append(out.meta["track_class_ids"][0])
            if i >= 10:
                assert out.meta["alert_track_ids"] == [int(out.track_ids[0])]
        assert voted and set(voted) == {DRONE}
    finally:
        stage.close()


def subscriber(cfg):
    ctx = zmq.Context()
    sub = open_socket(ctx, connect_side(cfg.endpoint("events")), hwm=10000)
    time.sleep(0.3)  # PUB/SUB: let the subscription reach the publisher before anything is sent
    return ctx, sub


def received(sub) -> list[list[bytes]]:
    messages = []
    while sub.poll(300):
        messages.append(sub.recv_multipart())
    return messages


def run_and_listen(cfg, stage, frames) -> list[list[bytes]]:
    """Everything the stage publishes while it processes ``frames`` of cam0 and ends the stream."""
    ctx, sub = subscriber(cfg)
    try:
        for msg in frames:
            stage.process(msg)
        stage.end_stream("cam0")
        return received(sub)
    finally:
        stage.close()
        sub.close(0)
        ctx.term()


def test_events_once_per_confirmed_track_with_thumbnail_and_lost(tmp_path):
    cfg, stage = make_stage(tmp_path, lost_track_buffer=5, events_hwm=1000)  # the test reads at the end
    # two drones and a bird for 30 frames, then nothing: all three tracks end
    targets = [lambda i: small_target(i), lambda i: small_target(i, x0=300, y0=300, vx=-2, vy=1, size=10),
               lambda i: small_target(i, x0=500, y0=60, vx=0, vy=2, size=14, score=0.7, cls=BIRD)]
    messages = run_and_listen(cfg, stage, [frame(i, [t(i) for t in targets] if i < 30 else []) for i in range(60)])
    events = [json.loads(m[1]) for m in messages if m[0] == b"event"]
    confirmed = [e for e in events if e["type"] == "track_confirmed"]
    lost = [e for e in events if e["type"] == "track_lost"]
    assert sorted(e["track_id"] for e in confirmed) == sorted({e["track_id"] for e in confirmed})
    assert len(confirmed) == 2 and {e["class"] for e in confirmed} == {"drone"}  # the bird raises nothing
    assert sorted(e["track_id"] for e in lost) == sorted(e["track_id"] for e in confirmed)
    assert {e["reason"] for e in lost} == {"expired"}  # gone long before the stream ended
    thumb = cv2.imdecode(np.frombuffer(base64.b64decode(confirmed[0]["thumbnail_jpeg_b64"]), np.uint8),
                         cv2.IMREAD_COLOR)
    assert thumb.shape == (96, 96, 3) and thumb.min() < 60  # the dark target is in it
    logged = [json.loads(line) for line in (tmp_path / "out" / "events.jsonl").read_text().splitlines()]
    assert logged == events
    frames = [m for m in messages if m[0] == b"frame/cam0"]
    assert len(frames) == 60
    published = FrameMessage.decode(frames[-1][1:])
    assert published.image.shape == (512, 640, 3) and published.stream_id == "cam0"


def confirmed_classes(tmp_path, targets, **track) -> dict[int, dict]:
    """target index -> its track_confirmed event, for 20 frames of ``targets`` (functions of the frame)."""
    cfg, stage = make_stage(tmp_path, events_hwm=1000, **track)
    messages = run_and_listen(cfg, stage, [frame(i, [t(i) for t in targets]) for i in range(20)])
    events = [json.loads(m[1]) for m in messages if m[0] == b"event"]
    return {round(e["box"][1]): e for e in events if e["type"] == "track_confirmed"}


# a drone the classifier cannot settle on (airplane / drone / bird / airplane in turn: voted airplane with
# half the votes), a bird it is sure of, and a faint speck called bird and drone in turn (score 0.55)
AIRPLANE = CLASSES.index("airplane")
SHAKY = [lambda i: small_target(i, y0=100, cls=(AIRPLANE, DRONE, BIRD, AIRPLANE)[i % 4], score=0.6),
         lambda i: small_target(i, y0=300, vx=2, cls=BIRD, score=0.7),
         lambda i: small_target(i, y0=450, vx=1, size=6, score=0.55, cls=BIRD if i % 2 else DRONE)]


def test_object_mode_alerts_on_a_drone_whose_class_guess_is_shaky_but_not_on_a_sure_bird(tmp_path):
    """alert_on: object alerts on any aerial object whose class-agnostic object score is high enough,
    unless its vote is confidently a class that does not alert; the event carries both scores."""
    by_class = confirmed_classes(tmp_path / "class", SHAKY)
    assert 100 not in by_class     # class mode: voted airplane, no alert for the drone
    by_object = confirmed_classes(tmp_path / "object", SHAKY, alert_on="object", alert_min_object_score=0.58)
    assert set(by_object) == {100}
    event = by_object[100]
    assert event["object_score"] == pytest.approx(0.6, abs=1e-3) and event["class_confidence"] < 0.5
    looser = confirmed_classes(tmp_path / "loose", SHAKY, alert_on="object", alert_min_object_score=0.5)
    assert set(looser) == {100, 450}  # the faint speck reaches 0.5 and its vote is split; the sure bird never
    assert looser[450]["class_confidence"] == pytest.approx(0.5, abs=0.1)


def test_objectness_keeps_an_object_with_split_class_guesses_tracked_and_alerting_in_object_mode(tmp_path):
    """The detector sends its objectness (meta object_scores): a drone whose class guesses split scores
    0.28 (objectness 0.7 x class 0.4), too low for the tracker to start a track on; in object mode the
    tracker and the alert go by the objectness, and the event's object_score is it."""
    def frames():
        for i in range(20):
            msg = frame(i, [small_target(i, y0=100, cls=(AIRPLANE, DRONE, BIRD)[i % 3], score=0.28)])
            msg.meta["object_scores"] = [0.7]
            yield msg

    cfg, stage = make_stage(tmp_path / "class", events_hwm=1000)
    assert [json.loads(m[1]) for m in run_and_listen(cfg, stage, list(frames())) if m[0] == b"event"] == []
    cfg, stage = make_stage(tmp_path / "object", events_hwm=1000, alert_on="object", alert_min_object_score=0.5)
    events = [json.loads(m[1]) for m in run_and_listen(cfg, stage, list(frames())) if m[0] == b"event"]
    confirmed = [e for e in events if e["type"] == "track_confirmed"]
    assert len(confirmed) == 1 and confirmed[0]["object_score"] == pytest.approx(0.7)


@pytest.mark.parametrize("scores", [[0.5, 0.5], [1.5], ["x"], [True], 0.5])
def test_object_scores_that_do_not_fit_the_detections_are_a_counted_drop(tmp_path, scores):
    _, stage = make_stage(tmp_path)
    msg = frame(0, [small_target(0)])
    msg.meta["object_scores"] = scores
    assert "object_scores" in stage.accept(msg)
    msg.meta["object_scores"] = [0.5]
    assert stage.accept(msg) is None
    stage.close()


def test_object_scores_follow_their_detections_out_of_an_ignore_zone(tmp_path):
    zone = {"kind": "ignore", "polygon": [[0, 0], [200, 0], [200, 512], [0, 512]]}
    _, stage = make_stage(tmp_path, zones=[zone], alert_on="object", alert_min_object_score=0.5)
    msg = frame(0, [small_target(0, x0=50), small_target(0, x0=400)])
    msg.meta["object_scores"] = [0.2, 0.9]
    out = stage.process(msg)[0]
    assert len(out.detections) == 1 and out.meta["object_scores"] == [0.9]
    stage.close()


def test_the_dismiss_bar_sets_how_sure_a_vote_must_be_to_silence_an_object(tmp_path):
    mostly_bird = [lambda i: small_target(i, y0=300, vx=2, cls=DRONE if i % 10 == 9 else BIRD, score=0.7)]
    silenced = confirmed_classes(tmp_path / "a", mostly_bird, alert_on="object", dismiss_confidence=0.8)
    assert silenced == {}     # 9 in 10 frames a bird: sure enough at 0.8
    alerted = confirmed_classes(tmp_path / "b", mostly_bird, alert_on="object", dismiss_confidence=0.95)
    assert [event["class"] for event in alerted.values()] == ["bird"]
    assert 0.85 <= alerted[300]["class_confidence"] < 0.95


@pytest.mark.parametrize("size", [(640, 512), (1920, 1080)])
def test_annotation_draws_boxes_hud_and_a_magnified_inset(tmp_path, size):
    _, stage = make_stage(tmp_path)
    try:
        for i in range(12):
            msg = frame(i, [small_target(i, x0=200, y0=300)], size=size)
            raw = msg.image.copy()
            out = stage.process(msg)[0]
        np.testing.assert_array_equal(out.image, raw)  # the raw frame is recorded too: never drawn on
        annotated = out.buffers["annotated"]
        scale = ui_scale(annotated.shape)
        assert scale == pytest.approx(min(size[1] / REFERENCE_HEIGHT, size[0] / 640))
        tile = round(32 * 4 * scale)
        margin = max(2, round(4 * scale))
        inset = annotated[margin + 4:margin + tile - 4, size[0] - tile - margin + 4:size[0] - margin - 4]
        dark = (inset.max(axis=2) < 40).sum()
        assert dark >= 0.5 * (8 * tile / 32) ** 2  # the 8 px target, magnified tile/32 times
        hud = annotated[: round(12 * scale), : round(200 * scale)]
        assert (hud == 0).mean() > 0.3 and (hud > 200).any()  # white text on black
        x1, y1, x2, y2 = out.detections[0, :4].astype(int)
        assert (annotated[y1:y2, x1:x2] == raw[y1:y2, x1:x2]).all()  # padded box: lines stay off the target
        assert (annotated[y1 - 6:y2 + 6, x1 - 6:x2 + 6] != raw[y1 - 6:y2 + 6, x1 - 6:x2 + 6]).any()
    finally:
        stage.close()


def hud_rows(annotated: np.ndarray) -> int:
    """Rows of the HUD's black box from the top (its left column stays black below the text)."""
    black = (annotated[:, 1] == 0).all(axis=1)
    return int(np.argmin(black)) if not black.all() else len(black)


@pytest.mark.parametrize("size", [(320, 256), (640, 512), (1920, 1080)])
def test_annotation_reads_the_same_at_every_frame_size(tmp_path, size):
    """The thermal camera's 320x256 is drawn on a 640x512 canvas (nearest neighbour, raw untouched), so
    its HUD and insets take the share of the picture they take at 640x512 and 1080p, never 4-px text."""
    _, stage = make_stage(tmp_path)
    k = 2 if size == (320, 256) else 1
    try:
        for i in range(12):
            msg = frame(i, [small_target(i, x0=size[0] * 0.3, y0=size[1] * 0.6, size=6)], size=size)
            raw = msg.image.copy()
            out = stage.process(msg)[0]
        annotated = out.buffers["annotated"]
        (tmp_path / f"annotated_{size[0]}x{size[1]}.png").write_bytes(cv2.imencode(".png", annotated)[1].tobytes())
        assert annotated.shape == (size[1] * k, size[0] * k, 3) and out.image.shape == (size[1], size[0], 3)
        np.testing.assert_array_equal(out.image, raw)
        hud_share = hud_rows(annotated) / annotated.shape[0]
        assert hud_rows(annotated) >= 14 and 0.025 < hud_share < 0.045, (hud_rows(annotated), hud_share)
        x1, y1, x2, y2 = out.detections[0, :4]  # boxes stay in source pixels (tracks.jsonl, scoring)
        assert abs(x1 - (size[0] * 0.3 + 3 * 11)) < 1e-3
        target = annotated[int(y1) * k:int(y2) * k, int(x1) * k:int(x2) * k]
        assert (target == 20).all()  # the drone's pixels, enlarged, not smoothed or drawn over
        tile = round(32 * 4 * ui_scale(annotated.shape))
        margin = max(2, round(4 * ui_scale(annotated.shape)))
        inset = annotated[margin + 4:margin + tile - 4, annotated.shape[1] - tile - margin + 4:-margin - 4]
        assert (inset.max(axis=2) < 40).sum() >= 0.5 * (6 * 4) ** 2  # the 6-px drone at 4x its source size
    finally:
        stage.close()


def test_insets_move_to_the_left_edge_rather_than_cover_a_drone_on_the_right(tmp_path):
    _, stage = make_stage(tmp_path)
    tile, margin = 32 * 4, 4
    try:
        for i in range(12):   # a drone flying inside the right edge's inset column
            msg = frame(i, [small_target(i, x0=560, y0=200, vx=1.0)])
            out = stage.process(msg)[0]
        annotated, raw = out.buffers["annotated"], msg.image
        x1, y1, x2, y2 = out.detections[0, :4].astype(int)
        assert (annotated[y1:y2, x1:x2] == raw[y1:y2, x1:x2]).all()            # the drone itself is not covered
        hud_bottom = int(np.flatnonzero((annotated[:, 2] == 0).all(axis=1))[-1]) + 1
        left_inset = annotated[hud_bottom + 4:hud_bottom + tile - 4, margin + 4:margin + tile - 4]
        assert (left_inset.max(axis=2) < 40).sum() >= 0.5 * (8 * tile / 32) ** 2  # the magnified drone
        assert hud_bottom > 8 and (annotated[:hud_bottom, margin:margin + tile] == 0).mean() > 0.5  # HUD on top
        for i in range(12, 34):   # it flies left, out of the column: the insets stay where they are
            out = stage.process(frame(i, [small_target(i, x0=571 + 4 * 11, y0=200, vx=-4.0)]))[0]
        assert out.detections[0, 2] < 640 - tile - margin and out.track_ids[0] >= 1
        left_inset = out.buffers["annotated"][hud_bottom + 4:hud_bottom + tile - 4, margin + 4:margin + tile - 4]
        assert (left_inset.max(axis=2) < 40).any()
    finally:
        stage.close()


def test_resent_frames_get_no_track_ids_and_do_not_rewind_the_tracker(tmp_path):
    _, stage = make_stage(tmp_path)
    try:
        for i in range(10):
            stage.process(frame(i, [small_target(i)]))
        out = stage.process(frame(5, [small_target(5)]))[0]
        assert out.track_ids.tolist() == [-1] and stage.counters["frames_out_of_order"] == 1
        assert stage.process(frame(10, [small_target(10)]))[0].track_ids[0] >= 1
    finally:
        stage.close()


def test_a_source_restarted_on_another_host_is_tracked_again_from_its_frame_0(tmp_path):
    _, stage = make_stage(tmp_path)

    def in_session(msg: FrameMessage, session: str) -> FrameMessage:
        msg.meta["session"] = session
        return msg

    try:
        for i in range(10):
            first_ids = stage.process(in_session(frame(i, [small_target(i)]), "edge-a"))[0].track_ids
        for i in range(5):  # without the session these would all be resent frames, never tracked
            again = stage.process(in_session(frame(i, [small_target(i)]), "edge-b"))[0].track_ids
        assert again[0] > first_ids[0] >= 1 and stage.counters["frames_out_of_order"] == 0
    finally:
        stage.close()


def test_a_full_disk_keeps_events_flowing_and_counts_what_was_not_logged(small_disk):
    cfg, stage = make_stage(small_disk, events_hwm=1000)
    fill_disk(small_disk)
    messages = run_and_listen(cfg, stage, [frame(i, [small_target(i)]) for i in range(30)])
    events = [json.loads(m[1]) for m in messages if m[0] == b"event"]
    assert [e["type"] for e in events] == ["track_confirmed", "track_lost"]  # published all the same
    assert stage.status()["events_unlogged"] == 2


def test_a_restarted_track_stage_never_reuses_a_track_id(tmp_path):
    """A restart (or a new run into the same folder) continues past every id handed out: alerts do not
    fire twice for one id and MOT ids do not collide; the restart is an event."""
    def first_ids(stage) -> set[int]:
        ids = set()
        for i in range(10):
            ids |= {int(t) for t in stage.process(frame(i, [small_target(i)]))[0].track_ids if t >= 0}
        return ids

    cfg, stage = make_stage(tmp_path)
    try:
        before = first_ids(stage)
    finally:
        stage.close()
    sub = open_socket(zmq.Context.instance(), connect_side(cfg.endpoint("events")), subscribe=b"event")
    try:
        _, again = make_stage(tmp_path)
        try:
            time.sleep(0.3)  # the subscription reaches the new PUB socket
            after = first_ids(again)
        finally:
            again.close()
        assert before == {1} and after == {1001}
        events = []
        while sub.poll(500):
            events.append(json.loads(sub.recv_multipart()[1]))
        assert {"type": "tracker_restarted", "stream_id": "cam0", "first_track_id": 1001}.items() <= events[0].items()
    finally:
        sub.close(0)
    assert json.loads((tmp_path / "out" / "track_ids.json").read_text()) == {"cam0": 1001 + 999}


def test_an_unreadable_track_id_file_is_one_line_and_ids_start_over(tmp_path, caplog):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "track_ids.json").write_text('{"cam0": ')  # cut short by a crash
    _, stage = make_stage(tmp_path)
    try:
        ids = {int(t) for i in range(10) for t in stage.process(frame(i, [small_target(i)]))[0].track_ids if t >= 0}
        assert ids == {1} and "track_ids.json is unreadable" in caplog.text
    finally:
        stage.close()


# ---------------------------------------------------------------- zones (sources[].zones)
def box_rectangle(x0, y0, x1, y1) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def process_and_listen(cfg, stage, frames) -> tuple[list[FrameMessage], list[dict]]:
    """What the stage returns for each of ``frames`` of cam0, and the events it publishes (to the stream's end)."""
    ctx, sub = subscriber(cfg)
    try:
        outputs = [stage.process(msg)[0] for msg in frames]
        stage.end_stream("cam0")
        return outputs, [json.loads(m[1]) for m in received(sub) if m[0] == b"event"]
    finally:
        stage.close()
        sub.close(0)
        ctx.term()


def test_a_detection_in_an_ignore_zone_never_becomes_a_track_and_is_counted(tmp_path):
    trees = {"kind": "ignore", "polygon": [[300, 0], [640, 0], [640, 150], [450, 260], [300, 150]]}  # concave
    cfg, stage = make_stage(tmp_path, zones=[trees], events_hwm=1000)

    def in_trees(i: int) -> list:  # swaying leaves the detector calls a drone
        return small_target(i, x0=400, y0=40, vx=1)

    def outside(i: int) -> list:
        return small_target(i, x0=60, y0=300)

    outputs, events = process_and_listen(cfg, stage, [frame(i, [in_trees(i), outside(i)]) for i in range(30)])
    for i, out in enumerate(outputs):  # only the box outside is kept, tracked and recorded
        np.testing.assert_array_equal(out.detections, np.array([outside(i)], np.float32))
        assert out.track_ids.shape == (1,) and len(out.meta["track_class_ids"]) == 1
    assert {int(out.track_ids[0]) for out in outputs[5:]} == {1}
    assert stage.counters["detections_ignored"] == 30
    assert [(e["type"], e["track_id"]) for e in events] == [("track_confirmed", 1), ("track_lost", 1)]
    assert events[0]["box"][0] < 300  # the alert is the target outside the trees


def test_alerts_fire_only_inside_a_require_zone_and_once_when_a_track_enters_one(tmp_path):
    runway = {"kind": "require", "polygon": box_rectangle(320, 0, 640, 512), "name": "runway"}
    cfg, stage = make_stage(tmp_path, zones=[runway], events_hwm=1000)
    targets = {"outside": lambda i: small_target(i, x0=60, y0=100, vx=1),
               "inside": lambda i: small_target(i, x0=400, y0=300, vx=1),
               "entering": lambda i: small_target(i, x0=250, y0=420, vx=4)}  # its centre crosses x=320 at frame 17
    outputs, events = process_and_listen(cfg, stage, [frame(i, [t(i) for t in targets.values()]) for i in range(40)])
    ids = dict(zip(targets, outputs[-1].track_ids.tolist()))
    assert -1 not in ids.values() and len(set(ids.values())) == 3  # all three are tracked all the same
    confirmed = {e["track_id"]: e for e in events if e["type"] == "track_confirmed"}
    assert sorted(confirmed) == sorted([ids["inside"], ids["entering"]])
    assert len([e for e in events if e["type"] == "track_confirmed"]) == 2  # once each
    entered = confirmed[ids["entering"]]
    assert entered["frame_index"] >= 17 and (entered["box"][0] + entered["box"][2]) / 2 >= 320
    assert confirmed[ids["inside"]]["frame_index"] < 17
    assert stage.counters["alerts_outside_zones"] == 2  # the one outside, and the other before it entered
    assert stage.counters["tracks_confirmed"] == 2
    assert ids["outside"] not in outputs[-1].meta["alert_track_ids"]
    lost = sorted(e["track_id"] for e in events if e["type"] == "track_lost")
    assert lost == sorted([ids["inside"], ids["entering"]])  # a track that never alerted is not reported lost


@pytest.mark.parametrize("size", [(640, 512), (1920, 1080)])
def test_annotation_draws_the_zones_under_the_boxes(tmp_path, size):
    zones = [{"kind": "ignore", "polygon": box_rectangle(40, 200, 160, 300)},
             {"kind": "require", "polygon": box_rectangle(200, 150, 420, 400), "name": "runway"}]
    _, stage = make_stage(tmp_path, zones=zones)
    try:
        msg = frame(0, [[410, 250, 418, 258, 0.8, DRONE]], size=size)  # its padded box crosses the zone's right side
        raw = msg.image.copy()
        annotated = stage.process(msg)[0].buffers["annotated"]
    finally:
        stage.close()
    np.testing.assert_array_equal(msg.image, raw)  # drawn on a copy only
    scale = ui_scale(annotated.shape)
    outline = (annotated == REQUIRE_OUTLINE_BGR).all(axis=2)
    assert outline[300, 190:230].sum() >= max(1, round(scale))  # the left side, as thick as the scale says
    assert outline[150:401, 200].all() and outline[150, 200:421].all() and outline[400, 200:421].all()
    assert outline[270:401, 420].all()  # the right side below the box
    assert not outline[200:390, 210:400].any()  # a require zone's inside is not painted
    label = slice(152, 150 + round(20 * scale)), slice(203, 203 + round(60 * scale))
    assert (annotated[label] != raw[label]).any()  # "runway" by its first corner
    assert (annotated[220:280, 60:140] < raw[220:280, 60:140]).all()  # the ignore zone is greyed out
    assert (annotated[220:280, 170:190] == raw[220:280, 170:190]).all()  # between the zones: untouched
    box_bottom = 258 + round(3 * scale)  # the detection's box, padded (its label sits on top), drawn over the outline
    assert (annotated[box_bottom, 420] == UNTRACKED_COLOR.as_bgr()).all() and outline[box_bottom + 1, 420]


def test_a_missing_tracking_library_is_one_line_before_the_run(monkeypatch, tmp_path):
    """supervision and trackers load beside the first beat; the preflight says at once if one is absent."""
    import importlib.util

    from pipeline.runtime.config import ConfigError

    cfg = config_from_dict({"sources": [{"id": "a", "uri": "x.mp4"}], "output_dir": str(tmp_path)}, check_files=False)
    TrackStage.preflight(cfg)  # both there
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trackers" else real(name, *a))
    with pytest.raises(ConfigError, match="needs the Python package 'trackers'"):
        TrackStage.preflight(cfg)
