"""The links between processes, derived from the stages a config names.

Every link has a key (the ``endpoints`` override key), the pattern of the side that binds (the
receiver, or the publisher) and a tcp port offset of its own, fixed by whoever declares the link, so
adding a stage never moves another link's port:
    control   pull (offset 4)   heartbeats to the supervisor, which binds it
    status    pub  (offset 6)   the supervisor's status snapshots
    <name>_in pull              the frame input of every frame-path stage but the source; the
                                stage's ``port_offset`` (built-ins 0-3), else one derived from its name
    ...                         side links a stage binds (``Stage.binds``: the track stage's events, 5)
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

from pipeline.runtime.schema import ConfigError

PEER = {"pull": "push", "push": "pull", "pub": "sub", "sub": "pub"}
DERIVED_OFFSETS = range(16, 1016)  # where a stage that declares no offset gets one (by its name's crc32)


@dataclass(frozen=True)
class Link:
    pattern: str  # of the binding side: pull (frames, heartbeats) or pub (events, status)
    port_offset: int
    owner: str  # who binds it: a stage name, or "supervisor"


CORE_LINKS = {"control": Link("pull", 4, "supervisor"), "status": Link("pub", 6, "supervisor")}


def input_key(stage: str) -> str:
    return f"{stage}_in"


def derived_offset(key: str) -> int:
    return DERIVED_OFFSETS[zlib.crc32(key.encode()) % len(DERIVED_OFFSETS)]


def link_table(cfg) -> dict[str, Link]:
    """Every link of the config's stages, by key; ConfigError if two share a port offset."""
    table = dict(CORE_LINKS)
    for name in cfg.path_names[1:]:
        cls = cfg.stage_class(name)
        key = input_key(name)
        offset = cls.port_offset if cls.port_offset is not None else derived_offset(key)
        table[key] = Link("pull", offset, name)
    for name in cfg.stage_refs():
        for key, (pattern, offset) in cfg.stage_class(name).binds.items():
            table[key] = Link(pattern, offset, name)
    for name in cfg.stage_refs():
        cls = cfg.stage_class(name)
        for key in cls.subscribes if cls.enabled(cfg) else ():
            if key not in table:
                raise ConfigError(f"stage {name!r} follows link {key!r}, which no stage of this config binds "
                                  f"(frame_path: {', '.join(cfg.frame_path)})")
    _check_offsets(table, cfg.transport.base_port)
    return table


def _check_offsets(table: dict[str, Link], base_port: int) -> None:
    by_offset: dict[int, str] = {}
    for key, link in table.items():
        if link.port_offset in by_offset:
            raise ConfigError(f"links {by_offset[link.port_offset]!r} and {key!r} share tcp port offset "
                              f"{link.port_offset}: give one of their stages another port_offset")
        by_offset[link.port_offset] = key
        if base_port + link.port_offset > 65535:
            raise ConfigError(f"config key 'transport.base_port': {base_port} + the offset {link.port_offset} "
                              f"of link {key!r} is past port 65535")


def default_endpoints(cfg, table: dict[str, Link]) -> dict[str, str]:
    """Bound side of every link, from the transport settings (the receiver binds)."""
    t = cfg.transport
    out = {}
    for key, link in table.items():
        address = f"ipc://{t.ipc_dir}/{key}" if t.kind == "ipc" else f"tcp://{t.host}:{t.base_port + link.port_offset}"
        out[key] = f"{link.pattern}+bind:{address}"
    return out
