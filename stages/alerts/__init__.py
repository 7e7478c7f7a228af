"""Alerts out: a consumer beside the track stage that forwards its events to an MQTT broker and to
webhooks, where operators already look (home automation, a VMS, a chat or incident tool).

It follows the track stage's ``events`` PUB (topic ``event``: track_confirmed, track_lost,
tracker_restarted, and the supervisor's stream_down / stream_up) like the view does, and the
supervisor's ``status`` to know when the run is over. The subscriber loop never waits on a sink:
each sink has a bounded outbox and its own thread, so a slow or absent broker or receiver costs the
pipeline nothing; what could not be delivered is counted in the heartbeat (``undelivered``,
``dropped``) and logged. At the end of a run each sink gets ``flush_timeout_s`` to send what is
queued.

Off by default: the stage runs when ``stages.alerts.mqtt`` or ``stages.alerts.webhooks`` is set.
"""
from __future__ import annotations

import logging
import signal
import sys
import time
from dataclasses import dataclass

from pipeline.runtime.config import ConfigError, PipelineConfig, check_file
from pipeline.runtime.messages import MessageError, decode_json_message
from pipeline.runtime.schema import setting
from pipeline.runtime.side_channels import SideChannels, run_is_over
from pipeline.runtime.stage import Stage
from stages.alerts.alert import EVENT_KINDS, AlertError, from_event
from stages.alerts.mqtt import MqttConfig, MqttSink
from stages.alerts.webhook import WebhookConfig, WebhookSink

log = logging.getLogger("stages.alerts")
EVENT_HWM = 1000
MAX_SECRET_BYTES = 4096


@dataclass
class AlertsConfig:
    events: list[str] = setting(factory=lambda: ["track_confirmed", "track_lost", "stream_down", "stream_up",
                                                 "tracker_restarted"], choices=EVENT_KINDS)  # kinds forwarded
    mqtt: MqttConfig | None = None
    webhooks: list[WebhookConfig] = setting(factory=list)
    flush_timeout_s: float = setting(5.0, ge=0)  # at the end of a run: how long queued alerts may still go out


class AlertsStage(Stage):
    """`run()` forwards events until SIGTERM or the end of the run, flushes the sinks, exits 0."""

    name = "alerts"
    role = "consumer"
    section = AlertsConfig
    beside = "track"
    subscribes = ("events", "status")

    @classmethod
    def enabled(cls, cfg: PipelineConfig) -> bool:
        s = cfg.stages.alerts
        return s.mqtt is not None or bool(s.webhooks)

    @classmethod
    def check_config(cls, cfg: PipelineConfig, check_files: bool) -> None:
        s = cfg.stages.alerts
        if not check_files or not cls.enabled(cfg):
            return
        if s.mqtt is not None:
            for key in ("password_file", "tls_ca"):
                check_file(cfg, getattr(s.mqtt, key), f"stages.alerts.mqtt.{key}")
        for i, hook in enumerate(s.webhooks):
            check_file(cfg, hook.secret_file, f"stages.alerts.webhooks[{i}].secret_file")

    def __init__(self, cfg: PipelineConfig):
        super().__init__(cfg)
        self.kinds, self.streams = set(self.settings.events), set(cfg.stream_ids)
        self.stopping = False
        self.counters = {"events": 0, "forwarded": 0, "malformed": 0}

    def run(self) -> int:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s alerts[%(process)d] %(levelname)s %(message)s")
        try:
            sinks = self._sinks()
        except ConfigError as exc:
            print(f"error: alerts: {exc}", file=sys.stderr)
            return 2
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        channels = SideChannels(self.cfg, self.name, [("events", b"event", EVENT_HWM), ("status", b"", EVENT_HWM)])
        for sink in sinks:
            sink.start()
        log.info("forwarding %s to %s", ", ".join(sorted(self.kinds)), ", ".join(s.label for s in sinks))
        try:
            self._follow(channels, sinks)
        finally:
            deadline = time.monotonic() + self.settings.flush_timeout_s
            for sink in sinks:
                sink.close(deadline)
            self._report(sinks)
            channels.beat("exiting", self._beat_fields(sinks))
            channels.close()
        return 0

    def _sinks(self) -> list:
        s = self.settings
        sinks: list = []
        if s.mqtt is not None:
            password = self._secret(s.mqtt.password_file, "stages.alerts.mqtt.password_file")
            sinks.append(MqttSink(s.mqtt, password.decode() if password is not None else None))
        for i, hook in enumerate(s.webhooks):
            sinks.append(WebhookSink(i, hook, self._secret(hook.secret_file, f"stages.alerts.webhooks[{i}].secret_file")))
        return sinks

    def _secret(self, path: str | None, key: str) -> bytes | None:
        if not path:
            return None
        try:
            with open(self.cfg.resolve(path), "rb") as f:
                secret = f.read(MAX_SECRET_BYTES + 1).strip()
        except OSError as exc:
            raise ConfigError(f"config key '{key}': cannot read {path} ({exc.strerror or exc})") from None
        if not secret or len(secret) > MAX_SECRET_BYTES:
            raise ConfigError(f"config key '{key}': {path} must hold 1 to {MAX_SECRET_BYTES} bytes")
        return secret

    def _on_term(self, signum, frame) -> None:
        self.stopping = True

    def _follow(self, channels: SideChannels, sinks: list) -> None:
        while not self.stopping:
            for parts in channels.receive(100):
                self._handle(parts, sinks)
            if channels.beat_due():
                channels.beat("running", self._beat_fields(sinks))

    def _handle(self, parts: list, sinks: list) -> None:
        try:
            topic, payload = decode_json_message(parts)
            if topic == "status":
                if run_is_over(payload, self.name):
                    log.info("every frame-path stage has exited: sending what is queued, then exiting")
                    self.stopping = True
                return
            self.counters["events"] += 1
            alert = from_event(payload, self.kinds, self.streams)
        except (MessageError, AlertError) as exc:
            self.counters["malformed"] += 1
            if self.counters["malformed"] <= 5 or self.counters["malformed"] % 100 == 0:
                log.warning("dropped a side-channel message: %s (%d so far)", exc, self.counters["malformed"])
            return
        if alert is not None:
            self.counters["forwarded"] += 1
            for sink in sinks:
                sink.offer(alert)

    def _beat_fields(self, sinks: list) -> dict:
        """Flat heartbeat fields: the stage's counts, each sink's as <sink>_<count>, and the total
        ``undelivered`` (dropped from a full outbox, given up, or left at the end) for the status line."""
        fields = dict(self.counters)
        undelivered = 0
        for sink in sinks:
            counts = sink.counters()
            fields.update({f"{sink.key}_{name}": value for name, value in counts.items()})
            undelivered += counts["dropped"] + counts.get("failed", 0) + counts["undelivered"]
        fields["undelivered"] = undelivered
        return fields

    def _report(self, sinks: list) -> None:
        for sink in sinks:
            counts = sink.counters()
            lost = counts["dropped"] + counts.get("failed", 0) + counts["undelivered"]
            (log.warning if lost else log.info)("%s: %d alerts delivered, %d not (%s)", sink.label, counts["sent"],
                                                lost, ", ".join(f"{k} {v}" for k, v in counts.items()))
