"""The run's status for people and monitors: the one-line status (``format_status``), the replay
progress bar (``Progress``) and the Prometheus gauges (``Prometheus``), all read from the stages' beats.
"""
from __future__ import annotations

import sys

from pipeline.runtime.config import ConfigError


def format_status(snapshot: dict, depths: dict[str, int]) -> str:
    parts = []
    for label, b in snapshot.items():
        text = f"{label} {b.get('fps', 0):.1f}fps {b.get('latency_ms_p50', 0):.0f}ms"
        drops = int(b.get("dropped_stale", 0)) + int(b.get("dropped_full", 0))
        if drops:
            text += f" drop={drops}"
        if label in depths:
            text += f" q={depths[label]}"
        if b.get("malformed"):
            text += f" bad={b['malformed']}"
        if b.get("frames_missing"):
            text += f" lost={b['frames_missing']}"
        if b.get("frames_unrecorded"):
            text += f" unrecorded={b['frames_unrecorded']}"
        if b.get("restarts"):
            text += f" restarts={b['restarts']}"
        if b.get("undelivered"):  # a consumer's alerts that could not be delivered
            text += f" undelivered={b['undelivered']}"
        if b.get("stream") and b.get("stream") != "up":
            text += f" [{b['stream']}]"
        if b.get("downstream_connected") is False:  # its downstream on another host is not connected
            text += " [remote down]"
        if b.get("senders") == 0:  # fed from another host, and no sender there yet
            text += " [no sender]"
        text += _tiling_text(b.get("tiling"))
        parts.append(text)
    return " | ".join(reversed(parts))


def _tiling_text(rows) -> str:
    """The detect stage's tiled streams: share of the tiles examined per frame, the longest a tile
    waited and the share of frames taken behind, e.g. `` tiles[cam]=25%/5f behind=8%`` (rows as
    stages.tiling.TilePlanner.coverage gives them)."""
    if not isinstance(rows, list):
        return ""
    texts = []
    for row in rows[:8]:
        if (isinstance(row, list) and 5 <= len(row) <= 16 and isinstance(row[0], str)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1e9 for v in row[1:])):
            texts.append(f" tiles[{row[0][:24]}]={100 * row[3]:.0f}%/{int(row[4])}f")
            if len(row) >= 7 and row[6] > 0:  # the share of frames the stage took behind (its budget shed)
                texts.append(f" behind={100 * min(row[6], 1):.0f}%")
    return "".join(texts)


class Progress:
    """Replay mode: a progress bar of recorded frames over frames in the sources."""

    def __init__(self, sources: list[str], last_stage: str):
        from tqdm import tqdm

        self.sources = sources  # the source stages' labels: their beats say how many frames there are
        self.last_stage = last_stage  # the frame path's end: what it processed is done
        self.bar = tqdm(total=0, unit="frame", desc="replay", file=sys.stderr, disable=not sys.stderr.isatty())

    def update(self, snapshot: dict, final: bool) -> None:
        total = sum(int(snapshot.get(label, {}).get("frames_total", 0)) for label in self.sources)
        done = int(snapshot.get(self.last_stage, {}).get("processed", 0))
        self.bar.total = max(total, done)
        self.bar.n = done
        self.bar.refresh()
        if final:
            self.bar.close()


class Prometheus:
    """Per-stage gauges on 127.0.0.1:<port> (prometheus_client), when a port is configured."""

    FIELDS = ("fps", "latency_ms_p50", "latency_ms_p99", "received", "processed", "sent", "dropped_stale",
              "dropped_full", "malformed", "restarts")

    def __init__(self, port: int | None):
        self.gauges = None
        if port is None:
            return
        from prometheus_client import Gauge, start_http_server

        try:
            start_http_server(port, addr="127.0.0.1")
        except OSError as exc:
            raise ConfigError(f"config key 'supervisor.prometheus_port': cannot serve on 127.0.0.1:{port} "
                              f"({exc.strerror or exc})") from None
        self.gauges = {f: Gauge(f"lss_stage_{f}", f"per-stage {f}", ["stage"]) for f in self.FIELDS}
        self.gauges["queue_depth"] = Gauge("lss_stage_queue_depth", "frames waiting before a stage", ["stage"])

    def update(self, snapshot: dict, depths: dict[str, int]) -> None:
        if self.gauges is None:
            return
        for label, beat in snapshot.items():
            for f in self.FIELDS:
                if f in beat:
                    self.gauges[f].labels(stage=label).set(float(beat[f]))
        for label, depth in depths.items():
            self.gauges["queue_depth"].labels(stage=label).set(depth)
