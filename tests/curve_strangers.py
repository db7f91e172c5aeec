"""Clients a CurveZMQ server must refuse, shared by the transport and the live-cluster tests."""

from __future__ import annotations

import zmq
import zmq.auth

from runtime.security import public_key


def untrusted(sock: zmq.Socket, keys, server: str, tmp_path) -> None:
    """A CURVE client with a keypair of its own that the server never authorised (it pins the server)."""
    public, secret = zmq.auth.load_certificate(zmq.auth.create_certificates(tmp_path, "rogue")[1])
    sock.curve_publickey, sock.curve_secretkey = public, secret
    sock.curve_serverkey = public_key(keys, server)


def plain(sock: zmq.Socket, keys, server: str, tmp_path) -> None:
    """No CURVE at all: the socket stays on the NULL mechanism."""
