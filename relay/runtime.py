"""What the running components share: the config of the moment, the store, the clock,
the policies, the authenticator, and the shape of a listener.

This module sits below every server and worker (they import it for its types), and
above nothing but config, store, identity and policy: the composition root
(`relay.app`) builds a `Runtime` and hands it to each component.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from relay.config.model import Config, ListenerConfig
from relay.identity.auth import Authenticator
from relay.identity.issuer import IssuerKeys
from relay.localday import LocalDay
from relay.metrics import Metrics
from relay.policy.model import Policies
from relay.store.indexcache import FolderIndexes
from relay.store.mailstore import MailStore
from relay.store.store import Store


class Listener(Protocol):
    """A network service started by the daemon (SMTP submission, inbound, IMAP)."""

    @property
    def description(self) -> str: ...

    @property
    def name(self) -> str:
        """The ``listener`` label of the metrics: kind and address (`listener_name`)."""
        ...

    @property
    def serving(self) -> bool:
        """Whether the listener accepts connections now (health check, metrics)."""
        ...

    async def start(self) -> None: ...

    async def stop(self, grace_seconds: float) -> None:
        """Stop accepting, let sessions finish for up to `grace_seconds`, then close."""
        ...


ListenerFactory = Callable[["Runtime", ListenerConfig], Listener]


@dataclass
class Runtime:
    """What the running components share. `config` is replaced on reload; components
    read it at each use so a reload takes effect at once."""

    config: Config
    store: Store
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    reload_hooks: list[Callable[[Config, Config], None]] = field(default_factory=list)
    policies: Policies = field(default_factory=Policies)
    authenticator: Authenticator = field(init=False)
    issuer_keys: IssuerKeys = field(init=False)  # the token issuer's cached keys
    # The folders in use, in memory (SELECT, STATUS, what changed): one per daemon,
    # shared by every IMAP listener.
    indexes: FolderIndexes = field(init=False)
    _local_day: LocalDay = field(init=False, default_factory=LocalDay)

    def __post_init__(self) -> None:
        self.issuer_keys = IssuerKeys(lambda: self.config.issuer)
        self.authenticator = Authenticator(
            lambda: self.config, today=self.today, tokens=self.issuer_keys
        )
        self.indexes = FolderIndexes(MailStore(self.store))

    @property
    def metrics(self) -> Metrics:
        """The daemon's metrics (the store's: it counts commits and audit events)."""
        return self.store.metrics

    def today(self) -> dt.date:
        """The local date now (relay.localday: found again only at local midnight)."""
        return self._local_day.of(self.clock())
