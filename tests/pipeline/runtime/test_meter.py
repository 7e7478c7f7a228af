"""pipeline/runtime/meter.py: the one meter behind every heartbeat."""
import threading

from pipeline.runtime.meter import FPS_WINDOW_S, Meter


def test_counts_rates_per_stream_and_percentiles():
    meter = Meter(("received",), series=("latency_ms", "added_ms"))
    for i in range(11):  # stream a: 10 frames a second; stream b: 5
        meter.tick("a", 100.0 + i * 0.1)
        meter.observe("latency_ms", float(i))
    for i in range(6):
        meter.tick("b", 100.0 + i * 0.2)
    meter.count("received", 3)
    assert meter.fps("a", now=101.0) == 10.0 and meter.fps("b", now=101.0) == 5.0
    snap = meter.snapshot(now=101.0)
    assert snap["received"] == 3 and snap["fps"] == 15.0
    assert snap["latency_ms_p50"] == 5.0 and snap["latency_ms_p99"] == 9.9 and snap["added_ms_p50"] == 0.0


def test_old_ticks_leave_the_rate():
    meter = Meter(())
    meter.tick("a", 0.0)
    meter.tick("a", 1.0)
    assert meter.fps("a", now=1.0) == 1.0 and meter.fps("a", now=1.0 + FPS_WINDOW_S + 0.1) == 0.0


def test_threads_share_one_meter():
    meter = Meter(("n",))
    threads = [threading.Thread(target=lambda: [meter.count("n") for _ in range(10_000)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert meter.snapshot()["n"] == 40_000
