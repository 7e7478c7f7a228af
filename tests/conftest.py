"""Shared fixtures. synthetic_* fixtures come from pipeline.offline.data.synthetic (owned with the dataset code)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def synthetic_dataset_root(tmp_path_factory):
    """A tiny dataset in the real layout: V_DRONE_900, V_BIRD_901 (640x512), IR_DRONE_902 (320x256), 30 frames."""
    from pipeline.offline.data import synthetic

    root = tmp_path_factory.mktemp("synthetic_dataset")
    synthetic.make_dataset(root, frames=30)
    return root


def loosen_visible_labels(root) -> None:
    """Redraw the visible clips' label boxes the way the real visible labels are drawn
    (pipeline.offline.data.synthetic.loose_visible_box, seeded)."""
    from pathlib import Path

    import numpy as np

    from pipeline.offline.data.synthetic import loose_visible_box

    rng = np.random.default_rng(0)
    for path in sorted((Path(root) / "labels_V").glob("*_LABELS.csv")):
        header, *rows = path.read_text().splitlines()
        loose = []
        for row in rows:
            frame, label, *xywh = row.split(",")
            x, y, w, h = loose_visible_box(tuple(map(float, xywh)), rng)
            loose.append(f"{frame},{label},{x:.2f},{y:.2f},{w:.2f},{h:.2f}")
        path.write_text("\n".join([header, *loose]) + "\n")


@pytest.fixture(scope="session")
def loose_visible_dataset_root(synthetic_dataset_root, tmp_path_factory):
    """synthetic_dataset_root with loose visible-camera boxes (loosen_visible_labels); thermal ones as they were."""
    import shutil

    root = tmp_path_factory.mktemp("loose_visible") / "data"
    shutil.copytree(synthetic_dataset_root, root)
    loosen_visible_labels(root)
    return root


@pytest.fixture(scope="session")
def synthetic_clip(tmp_path_factory):
    """One 320x256 visible clip of 30 frames: ClipPaths(video, coco, mot_gt)."""
    from pipeline.offline.data import synthetic

    return synthetic.make_clip(tmp_path_factory.mktemp("synthetic_clip"), seed=7, frames=30, size=(320, 256))


# ---------------------------------------------------------------- pipeline fixtures (lead)
import os  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory):
    """An untrained yolox-nano checkpoint at 256x320: real model, real file, fast on CPU."""
    import models

    path = tmp_path_factory.mktemp("weights") / "nano_random.pt"
    model = models.build_model("yolox-nano", num_classes=4)
    models.save_checkpoint(path, model, name="yolox-nano", input_size=(256, 320),
                           class_names=["drone", "bird", "airplane", "helicopter"])
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gst_rtsp_available() -> bool:
    if not Path(SYSTEM_PYTHON).exists():
        return False
    probe = ("import gi; gi.require_version('Gst','1.0'); gi.require_version('GstRtspServer','1.0'); "
             "from gi.repository import Gst, GstRtspServer")
    return subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True).returncode == 0


class RtspServer:
    """scripts/rtsp_server.py in its own process: start, kill, restart, freeze (SIGSTOP)."""

    def __init__(self, port: int, video: str | None = None):
        self.port, self.video, self.proc = port, video, None
        self.url = f"rtsp://127.0.0.1:{port}/cam"

    def start(self) -> "RtspServer":
        cmd = [SYSTEM_PYTHON, str(REPO_ROOT / "scripts" / "rtsp_server.py"), "--port", str(self.port), "--path", "/cam"]
        if self.video:
            cmd += ["--video", str(self.video)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"RTSP server did not start: {line} {self.proc.stderr.read()}")
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def signal(self, sig) -> None:
        self.proc.send_signal(sig)


@pytest.fixture
def rtsp_server():
    if not _gst_rtsp_available():
        pytest.skip("GStreamer RTSP server missing: apt-get install python3-gi gir1.2-gst-rtsp-server-1.0 "
                    "gstreamer1.0-plugins-{base,good,bad,ugly} (.ci/run does)")
    server = RtspServer(free_port()).start()
    yield server
    import signal as _signal

    if server.proc.poll() is None:
        server.proc.send_signal(_signal.SIGCONT)
    server.kill()


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MiB filesystem (tmpfs) to fill up; mounting needs root (CI here) or password-less sudo."""
    disk = tmp_path / "disk"
    disk.mkdir()
    as_root = [] if os.geteuid() == 0 else ["sudo", "-n"]
    mounted = subprocess.run([*as_root, "mount", "-t", "tmpfs", "-o", "size=4m,mode=1777", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"the full-disk tests mount a 4 MiB tmpfs, which failed here: {mounted.stderr.strip()}")
    yield disk
    subprocess.run([*as_root, "umount", "-l", str(disk)], check=False)


def fill_disk(disk: Path, leave_bytes: int = 0) -> Path:
    """A file that takes the disk's free space but about ``leave_bytes``; returns it (unlink to free)."""
    filler = disk / "filler.bin"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: nothing is left to flush on close
        try:
            for chunk in (1 << 16, 1 << 12):
                while os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize >= leave_bytes + chunk:
                    f.write(b"\0" * chunk)
            if not leave_bytes:
                while True:
                    f.write(b"\0" * 4096)
        except OSError:  # full
            pass
    return filler
