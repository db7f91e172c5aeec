"""Who may ask a worker for what: the bind policy, and authorisation by CURVE key (ZAP User-Id).

A worker reachable from the network runs CURVE (``runtime.security``) unless told ``--insecure``.
Under CURVE every message carries the public key its sender authenticated with; the worker maps it to
the key's name (the file name in DIR/authorized). Only the controller's key may configure, deploy,
hand in inputs, shut the worker down or read its detailed status; a device's key may only send the
bands its device sends or relays in a plan the controller deployed. Plans are bound to the key that
deployed them (without CURVE: to the connection), so no one else can take one over.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from runtime.transport import Kind, Message

INSECURE_WARNING = (
    "WARNING: this worker runs WITHOUT authentication or encryption (--insecure): anyone who reaches "
    "{endpoint} can deploy, read and stop it. Use --curve-keys (python -m runtime.security keygen)."
)
CONTROL_KINDS = frozenset({Kind.CONFIG, Kind.DEPLOY, Kind.INPUT, Kind.SHUTDOWN})
PEER_KINDS = frozenset({Kind.BAND, Kind.PING})


class InsecureBind(ValueError):
    """A worker would listen beyond this host without CURVE and without ``--insecure``."""


class Refused(ValueError):
    """The sender's key may not send this kind of message."""


def is_local(endpoint: str) -> bool:
    """Whether only this host can reach ``endpoint`` (loopback TCP, ipc, inproc)."""
    parts = urlsplit(endpoint)
    if parts.scheme in ("ipc", "inproc"):
        return True
    host = (parts.hostname or "").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface or host name: reachable from elsewhere
        return False


def check_bind(endpoint: str, secure: bool, insecure: bool) -> None:
    """Refuse to serve a network endpoint without CURVE unless the operator said ``insecure``."""
    if not secure and not insecure and not is_local(endpoint):
        raise InsecureBind(
            f"refusing to bind {endpoint} without CURVE keys: anyone who reaches it could control this "
            "worker. Give --curve-keys DIR (python -m runtime.security keygen DIR --cluster FILE), "
            "bind 127.0.0.1, or accept the risk with --insecure."
        )


@dataclass(frozen=True)
class Sender:
    """The authenticated sender of one message."""

    name: str | None  # its key's name under CURVE; None without CURVE
    controls: bool  # may configure, deploy, hand in inputs, shut down and read the status
    owner: object  # what plans it deploys are bound to: its key's name, or its connection

    def check(self, kind: Kind) -> None:
        if not self.controls and kind not in PEER_KINDS:
            raise Refused(f"key {self.name!r} may not send {kind.value} messages")


class Access:
    """Maps each message to its ``Sender`` (``keys``: public key -> name; None without CURVE)."""

    def __init__(self, keys: dict[bytes, str] | None, controller: str):
        self._names = None if keys is None else {k.decode(): n for k, n in keys.items()}
        self.controller = controller

    @property
    def secure(self) -> bool:
        return self._names is not None

    def sender(self, msg: Message) -> Sender:
        if self._names is None:
            return Sender(None, True, msg.peer)
        name = self._names.get(msg.user_id or "")
        if name is None:  # ZAP let it in, so the key was authorised after this worker started
            raise Refused("the sender's key was not authorised when this worker started")
        return Sender(name, name == self.controller, name)
