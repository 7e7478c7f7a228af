#!/usr/bin/env python
"""Make CurveZMQ key pairs for a tcp link between hosts (configs/multihost/*.yaml):

    python scripts/make_curve_keys.py keys/      -> keys/server.key(_secret), keys/client.key(_secret)

The host that binds needs server.key_secret; the host that connects needs client.key_secret and
server.key. Keep *_secret files private (they are written 0600).
"""
import argparse
import os
import sys
from pathlib import Path

import zmq.auth


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    for name in ("server", "client"):
        public, secret = zmq.auth.create_certificates(args.folder, name)
        os.chmod(secret, 0o600)
        print(f"{name}: {public} {secret}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
