"""models/backends: backends register themselves; check_backend refuses, in one line, what cannot run here."""
from __future__ import annotations

import importlib.util

import pytest

import models.backends as backends
from models.backends import (
    AUTO,
    BACKENDS,
    REGISTRY,
    Backend,
    BackendError,
    backend_class,
    check_available,
    check_backend,
    resolve_backend,
)


def test_the_shipped_backends_are_registered():
    assert {"torch", "onnx", "onnx-int8", "openvino", "openvino-bf16", "openvino-int8"} <= set(BACKENDS)
    assert all(REGISTRY[name].summary for name in BACKENDS)


def test_a_subclass_with_a_name_registers_itself():
    class EchoBackend(Backend):
        name = "echo-test"

        def run(self, batch):
            return batch

    try:
        assert backend_class("echo-test") is EchoBackend
        check_backend("echo-test", "cpu", False)
    finally:
        del REGISTRY["echo-test"]


@pytest.mark.parametrize("backend, device, fp16, key, problem", [
    ("tensorrt", "cpu", False, "backend", "unknown backend 'tensorrt'; valid: "),
    ("onnx", "cuda", False, "device", "runs on cpu only"),
    ("openvino-int8", "cuda:0", False, "device", "runs on cpu only"),
    ("torch", "gpu", False, "device", "device must be cpu or cuda"),
    ("torch", "cpu", True, "fp16", "fp16 needs a cuda device"),
])
def test_combinations_that_cannot_run(backend, device, fp16, key, problem):
    with pytest.raises(BackendError, match=problem) as raised:
        check_backend(backend, device, fp16)
    assert raised.value.key == key and "\n" not in str(raised.value)


def test_a_missing_package_is_named_with_its_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    with pytest.raises(BackendError, match=r"needs the Python package openvino \(pip install openvino\)"):
        check_available("openvino")
    check_backend("openvino", "cpu", False)  # a config naming it still loads on a host without it
    check_available("onnx")


def test_a_cpu_without_bf16_is_refused(monkeypatch):
    monkeypatch.setattr(backends, "cpu_flags", lambda: frozenset({"sse2", "avx2"}))
    with pytest.raises(BackendError, match="needs a CPU with avx512_bf16 or amx_bf16"):
        check_available("openvino-bf16")
    monkeypatch.setattr(backends, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    check_available("openvino-bf16")


def test_cpu_flags_come_from_proc_cpuinfo():
    flags = backends.cpu_flags()
    assert "sse2" in flags or not flags  # x86 lists sse2; elsewhere (no /proc/cpuinfo flags line) empty


def test_auto_picks_bf16_where_the_cpu_and_packages_allow_else_onnx(monkeypatch):
    monkeypatch.setattr(backends, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert resolve_backend(AUTO) == ("openvino-bf16" if importlib.util.find_spec("openvino") else "onnx")
    monkeypatch.setattr(backends, "cpu_flags", lambda: frozenset({"avx2"}))
    assert resolve_backend(AUTO) == "onnx"
    monkeypatch.setattr(backends, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    assert resolve_backend(AUTO) == "onnx"
    assert resolve_backend(AUTO, "cuda:1") == "torch"
    assert resolve_backend("openvino") == "openvino"  # a named backend is itself, whatever the machine


def test_auto_is_judged_as_its_fallback():
    check_backend(AUTO, "cpu", False)
    check_backend(AUTO, "cuda", True)
    with pytest.raises(BackendError, match="fp16 needs a cuda device"):
        check_backend(AUTO, "cpu", True)
    with pytest.raises(BackendError, match="valid: auto, "):
        backend_class("fastest")
    with pytest.raises(BackendError, match="'auto' must be resolved first"):
        backend_class(AUTO)  # not "unknown backend 'auto'; valid: auto, ..."
