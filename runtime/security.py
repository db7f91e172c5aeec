"""CurveZMQ authentication and encryption for the runtime's sockets (the "ironhouse" pattern).

Every worker binds its ROUTER as a CURVE server; the controller and the workers' outgoing
DEALERs are CURVE clients. One key directory serves a whole cluster::

    DIR/server.key             server public key, pinned by every client
    DIR/server.key_secret      server keypair, on worker devices only (shared by all workers)
    DIR/<name>.key_secret      client keypair of <name>: give it to that process only
    DIR/<name>.key             client public key of <name>
    DIR/authorized/<name>.key  client public keys servers accept; delete one to revoke it

Create it with ``python -m runtime.security keygen DIR --clients controller 0 1 2`` (or
``--count N`` for client0..clientN-1); running it again on DIR adds clients and keeps the server
key. Servers read DIR/authorized when `secure_server` is called, so changes apply on restart.
A client with an unknown key, or a plain (non-CURVE) peer, never completes the handshake: its
messages are never delivered and it gets nothing back.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

SERVER = "server"
AUTHORIZED = "authorized"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _create(directory: Path, name: str) -> Path:
    public, secret = zmq.auth.create_certificates(directory, name)
    os.chmod(secret, 0o600)
    return Path(public)


def generate_keypairs(directory: str | Path, names: Sequence[str]) -> None:
    """Write the server keypair (unless present) and one client keypair per name, authorised.

    Refuses names that are not plain file names or already have keys, so nothing is overwritten.
    """
    directory = Path(directory)
    for name in names:
        if not _NAME.fullmatch(name) or name == SERVER:
            raise ValueError(f"client name {name!r} must match {_NAME.pattern} and not be 'server'")
        if (directory / f"{name}.key_secret").exists():
            raise FileExistsError(f"keys for {name!r} already exist in {directory}")
    if len(set(names)) != len(names):
        raise ValueError(f"client names must be unique, got {list(names)}")
    (directory / AUTHORIZED).mkdir(parents=True, exist_ok=True)
    if not (directory / f"{SERVER}.key_secret").exists():
        _create(directory, SERVER)
    for name in names:
        public = _create(directory, name)
        shutil.copyfile(public, directory / AUTHORIZED / public.name)


def secure_server(socket: zmq.Socket, keys_dir: str | Path, context: zmq.Context) -> ThreadAuthenticator:
    """Make `socket` (before bind) a CURVE server accepting only keys in keys_dir/authorized.

    Starts the ZAP authenticator of `context` (a context holds one: one server socket per
    context); call `.stop()` on the returned authenticator at shutdown.
    """
    keys = Path(keys_dir)
    if not (keys / AUTHORIZED).is_dir():
        raise FileNotFoundError(f"{keys / AUTHORIZED} is missing: run keygen first")
    public, secret = zmq.auth.load_certificate(keys / f"{SERVER}.key_secret")
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve(domain="*", location=str(keys / AUTHORIZED))
    socket.curve_publickey, socket.curve_secretkey = public, secret
    socket.curve_server = True
    return auth


def secure_client(socket: zmq.Socket, keys_dir: str | Path, name: str) -> None:
    """Make `socket` (before connect) a CURVE client with keypair `name`, pinning the server key."""
    keys = Path(keys_dir)
    public, secret = zmq.auth.load_certificate(keys / f"{name}.key_secret")
    if secret is None:
        raise ValueError(f"{keys / f'{name}.key_secret'} holds no secret key")
    socket.curve_publickey, socket.curve_secretkey = public, secret
    socket.curve_serverkey, _ = zmq.auth.load_certificate(keys / f"{SERVER}.key")


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point: ``keygen DIR (--clients NAME... | --count N)``."""
    parser = argparse.ArgumentParser(
        prog="python -m runtime.security",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    keygen = commands.add_parser("keygen", help="create or extend a CurveZMQ key directory")
    keygen.add_argument("directory", type=Path)
    who = keygen.add_mutually_exclusive_group(required=True)
    who.add_argument("--clients", nargs="+", metavar="NAME", help="client names, e.g. device ids")
    who.add_argument("--count", type=int, metavar="N", help="N clients named client0..clientN-1")
    args = parser.parse_args(argv)
    names = args.clients or [f"client{i}" for i in range(args.count)]
    try:
        generate_keypairs(args.directory, names)
    except (ValueError, OSError) as e:
        parser.exit(2, f"keygen: error: {e}\n")
    print(f"server and client keys for {', '.join(names)} in {args.directory}")


if __name__ == "__main__":
    main()
