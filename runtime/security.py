"""CurveZMQ authentication and encryption for the runtime's sockets (the "ironhouse" pattern).

Every process of a cluster (each worker, the controller) has a keypair of its own. A worker binds its
ROUTER as a CURVE server with its own keypair and accepts only the public keys in DIR/authorized;
every client (the controller, and each worker's DEALERs to its peers) pins the public key of the
worker it connects to. One key directory describes a whole cluster::

    DIR/<name>.key_secret      keypair of <name> (a device id or "controller"): copy it to that host only
    DIR/<name>.key             public key of <name>
    DIR/authorized/<name>.key  the public keys workers accept, named by who holds them; delete one to
                               revoke it (workers read DIR/authorized when they start)

Create it for a cluster file with ``python -m runtime.security keygen DIR --cluster CLUSTER.yaml``
(keys for every device and for the controller; run again after adding devices, it adds theirs and keeps
the others), or for names of your choice with ``--clients NAME...`` (a name that has keys is an error).
No key is ever overwritten. Secret files are created 0600 and DIR 0700, so
no key is ever readable by others, not even for a moment. A client with an unknown key, or a plain
(non-CURVE) peer, never completes the handshake: its messages are never delivered and it gets nothing
back. What an authorised key may do is decided by `runtime.auth`.
"""

from __future__ import annotations

import argparse
import os
import re
import stat
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from runtime.spec import SpecError, load_cluster

AUTHORIZED = "authorized"
CONTROLLER = "controller"  # the key name of the controller, unless a worker is told otherwise
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class KeyFileError(OSError):
    """A key the process needs is missing, unreadable, malformed or readable by others."""


def _write_new(path: Path, text: str, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start (never another mode first); refuse to overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _certificate(public: bytes, secret: bytes | None) -> str:
    """A key file in zmq.auth's format (load_certificate reads it)."""
    kind = "Secret" if secret else "Public"
    lines = [
        f"#   ****  Generated on {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} by runtime.security  ****",
        f"#   ZeroMQ CURVE **{kind}** Certificate",
        "",
        "metadata",
        "curve",
        f'    public-key = "{public.decode()}"',
    ]
    if secret:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def generate_keypairs(directory: str | Path, names: Sequence[str]) -> None:
    """Write one keypair per name into ``directory`` (created 0700) and authorise its public key.

    Refuses names that are not plain file names or already have keys, so nothing is overwritten.
    """
    directory = Path(directory)
    for name in names:
        if not _NAME.fullmatch(name):
            raise ValueError(f"key name {name!r} must match {_NAME.pattern}")
        if (directory / f"{name}.key_secret").exists():
            raise FileExistsError(f"keys for {name!r} already exist in {directory}")
    if len(set(names)) != len(names):
        raise ValueError(f"key names must be unique, got {list(names)}")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    (directory / AUTHORIZED).mkdir(mode=0o700, exist_ok=True)
    for name in names:
        public, secret = zmq.curve_keypair()
        _write_new(directory / f"{name}.key_secret", _certificate(public, secret), 0o600)
        _write_new(directory / f"{name}.key", _certificate(public, None), 0o644)
        _write_new(directory / AUTHORIZED / f"{name}.key", _certificate(public, None), 0o644)


def load_keypair(keys_dir: str | Path, name: str) -> tuple[bytes, bytes]:
    """The keypair of ``name``; a clear error if it is missing, unreadable or readable by others."""
    path = Path(keys_dir) / f"{name}.key_secret"
    try:
        mode = path.stat().st_mode
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read the key of {name!r} ({path}): {exc}") from None
    if secret is None:
        raise KeyFileError(f"{path} holds no secret key")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path} is readable by others (mode {stat.S_IMODE(mode):o}): chmod 600 it")
    return public, secret


def authorized_keys(keys_dir: str | Path) -> dict[bytes, str]:
    """Public key (z85) -> name of every key in DIR/authorized."""
    folder = Path(keys_dir) / AUTHORIZED
    if not folder.is_dir():
        raise KeyFileError(f"{folder} is missing: run `python -m runtime.security keygen` first")
    keys = {}
    for path in sorted(folder.glob("*.key")):
        try:
            public, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as exc:
            raise KeyFileError(f"cannot read authorised key {path}: {exc}") from None
        keys[public] = path.stem
    return keys


def public_key(keys_dir: str | Path, name: str) -> bytes:
    """The authorised public key of ``name`` (a server a client pins)."""
    path = Path(keys_dir) / AUTHORIZED / f"{name}.key"
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"no authorised key for {name!r} ({path}): {exc}") from None
    return public


def secure_server(
    socket: zmq.Socket, keys_dir: str | Path, context: zmq.Context, name: str
) -> ThreadAuthenticator:
    """Make `socket` (before bind) a CURVE server with the keypair of ``name``, accepting only the keys
    in keys_dir/authorized.

    Starts the ZAP authenticator of `context` (a context holds one: one server socket per
    context); call `.stop()` on the returned authenticator at shutdown.
    """
    public, secret = load_keypair(keys_dir, name)
    authorized_keys(keys_dir)  # a clear error if the folder is missing
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve(domain="*", location=str(Path(keys_dir) / AUTHORIZED))
    socket.curve_publickey, socket.curve_secretkey = public, secret
    socket.curve_server = True
    return auth


def secure_client(socket: zmq.Socket, keys_dir: str | Path, name: str, server: str) -> None:
    """Make `socket` (before connect) a CURVE client with the keypair of ``name``, pinning the public
    key of ``server`` (the worker it connects to)."""
    socket.curve_publickey, socket.curve_secretkey = load_keypair(keys_dir, name)
    socket.curve_serverkey = public_key(keys_dir, server)


def _cluster_names(path: Path) -> list[str]:
    try:
        return sorted(load_cluster(path).devices)
    except (SpecError, OSError) as exc:
        raise ValueError(f"cluster file {path}: {exc}") from None


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point: ``keygen DIR (--cluster FILE | --clients NAME... | --count N)``."""
    parser = argparse.ArgumentParser(
        prog="python -m runtime.security",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    keygen = commands.add_parser("keygen", help="create or extend a CurveZMQ key directory")
    keygen.add_argument("directory", type=Path)
    who = keygen.add_mutually_exclusive_group(required=True)
    who.add_argument(
        "--cluster", type=Path, metavar="FILE", help=f"a key per device of a cluster file, and '{CONTROLLER}'"
    )
    who.add_argument("--clients", nargs="+", metavar="NAME", help="key names, e.g. device ids")
    who.add_argument("--count", type=int, metavar="N", help="N keys named client0..clientN-1")
    args = parser.parse_args(argv)
    kept: list[str] = []
    try:
        if args.cluster is not None:  # extends a directory: a device added to the cluster gets its key
            wanted = [CONTROLLER, *_cluster_names(args.cluster)]
            kept = [n for n in wanted if (args.directory / f"{n}.key_secret").exists()]
            names = [n for n in wanted if n not in kept]
        else:
            names = args.clients or [f"client{i}" for i in range(args.count)]
        if names:
            generate_keypairs(args.directory, names)
    except (ValueError, OSError) as e:
        parser.exit(2, f"keygen: error: {e}\n")
    if kept:
        print(f"kept the existing keys of {', '.join(kept)}")
    if names:
        print(
            f"keys for {', '.join(names)} in {args.directory}: copy <name>.key_secret and authorized/ to "
            "each host"
        )


if __name__ == "__main__":
    main()
