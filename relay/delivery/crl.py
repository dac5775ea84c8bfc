"""CRL refresh: keep revocation data fresh and swap new TLS contexts in, with no drop.

Runs only when ``[tls] crl_files`` is set (revocation checking on; see
`relay.tls.context`). Every ``crl_refresh_interval_seconds``, and at once on a config
reload, it:

1. reads the configured CRL files, the CRLs it fetched before (cached under
   ``<data_dir>/crl/``, so a restart without network keeps the last good ones) and
   fetches the http CRL distribution points (RFC 5280 §4.2.1.13) named in the trust
   anchors and in our own certificate chain, each within
   ``crl_fetch_timeout_seconds`` and a size bound; http only: CRLs are signed, and
   fetching them over TLS would need revocation data to check the fetch;
2. keeps a CRL only if it names an issuer among the trust anchors and its signature
   verifies with that issuer's key; keeps, per issuer, the newest (CRL number, then
   thisUpdate), never going back to an older one;
3. when that set changed, writes it to ``<data_dir>/crl/active.pem`` and builds new
   contexts from it: the outbound client's, and each listener's through
   `TlsReloadable.replace_tls`. Open connections keep the context they started with;
   new ones get the new one. Nothing is dropped;
4. checks freshness: an issuer whose newest CRL is past nextUpdate + ``crl_grace_seconds``
   is *stale*: one error log line and one `CrlStale` audit event when it becomes so.
   Handshakes needing that CRL already fail (OpenSSL refuses a CRL past nextUpdate,
   "CRL has expired", and a missing one, "unable to get certificate CRL"): the
   daemon fails closed for that issuer until a fresh CRL arrives. This is also why
   fetching must succeed *before* nextUpdate: the grace only delays the alarm.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import os
import re
import ssl
import tempfile
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID

from relay.audit.events import AuditEvent, CrlRejected, CrlStale, CrlUpdated
from relay.config.model import TlsConfig
from relay.metrics import CrlFact
from relay.runtime import Runtime
from relay.tls.context import TlsError, client_context

__all__ = [
    "MAX_CRL_BYTES",
    "CrlFetchError",
    "CrlRefresher",
    "TlsReloadable",
    "distribution_points",
    "fetch_crl",
]

log = structlog.get_logger("relay.crl")

# The largest IGC-Santé CRLs are a few MB; a bound keeps a hostile server from
# filling memory.
MAX_CRL_BYTES = 20 * 1024 * 1024
MAX_HTTP_HEAD_BYTES = 32 * 1024
ACTIVE_FILE = "active.pem"

_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


@runtime_checkable
class TlsReloadable(Protocol):
    """A listener that can take a new TLS context for its next connections."""

    def replace_tls(self, tls: TlsConfig) -> None: ...


class CrlFetchError(Exception):
    """A distribution point could not be fetched; the message says why (for logs)."""


@dataclass(frozen=True, slots=True)
class _Crl:
    crl: x509.CertificateRevocationList
    source: str
    issuer: str  # RFC 4514
    number: int | None
    der_sha256: str

    @property
    def rank(self) -> tuple[int, dt.datetime]:
        # RFC 5280 §5.2.3: CRL numbers increase; thisUpdate breaks ties and covers
        # CRLs without a number.
        return (self.number if self.number is not None else -1, self.crl.last_update_utc)


def _parse_crls(data: bytes) -> list[x509.CertificateRevocationList]:
    if b"-----BEGIN" in data:
        return [x509.load_pem_x509_crl(block) for block in _PEM_CRL.findall(data)]
    return [x509.load_der_x509_crl(data)]


def _certificates(paths: Iterable[Path]) -> list[x509.Certificate]:
    certs: list[x509.Certificate] = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        for block in _PEM_CERT.findall(data):
            with contextlib.suppress(ValueError):
                certs.append(x509.load_pem_x509_certificate(block))
    return certs


def distribution_points(certs: Iterable[x509.Certificate]) -> list[str]:
    """The http CRL distribution point URLs of `certs`, in order, without repeats."""
    urls: list[str] = []
    for cert in certs:
        try:
            ext = cert.extensions.get_extension_for_oid(ExtensionOID.CRL_DISTRIBUTION_POINTS)
        except x509.ExtensionNotFound:
            continue
        assert isinstance(ext.value, x509.CRLDistributionPoints)
        for point in ext.value:
            for name in point.full_name or ():
                if isinstance(name, x509.UniformResourceIdentifier):
                    url = name.value
                    if url.lower().startswith("http://") and url not in urls:
                        urls.append(url)
    return urls


async def fetch_crl(url: str, *, max_bytes: int = MAX_CRL_BYTES) -> bytes:
    """GET an http URL (HTTP/1.0: no chunked encoding, the server closes); the body.

    The caller bounds the time (`asyncio.timeout`). No redirects are followed: a
    distribution point names the CRL itself.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise CrlFetchError(f"{url}: only http:// distribution points are fetched")
    port = parts.port or 80
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    host_header = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    try:
        reader, writer = await asyncio.open_connection(parts.hostname, port)
    except OSError as exc:
        raise CrlFetchError(f"{url}: cannot connect: {exc.strerror or exc}") from None
    try:
        writer.write(
            f"GET {target} HTTP/1.0\r\nHost: {host_header}\r\nUser-Agent: mss-relay\r\n"
            "Accept: application/pkix-crl, */*\r\nConnection: close\r\n\r\n".encode("ascii")
        )
        await writer.drain()
        head = bytearray()
        while b"\r\n\r\n" not in head:
            chunk = await reader.read(4096)
            if not chunk:
                raise CrlFetchError(f"{url}: connection closed before the response headers")
            head += chunk
            if len(head) > MAX_HTTP_HEAD_BYTES + 4096:
                raise CrlFetchError(f"{url}: response headers too long")
        raw_head, _, body_start = bytes(head).partition(b"\r\n\r\n")
        status_line = raw_head.split(b"\r\n", 1)[0].decode("latin-1")
        fields = status_line.split(" ", 2)
        if len(fields) < 2 or not fields[0].startswith("HTTP/") or fields[1] != "200":
            raise CrlFetchError(f"{url}: HTTP status {status_line[:80]!r}")
        body = bytearray(body_start)
        while len(body) <= max_bytes:
            chunk = await reader.read(65536)
            if not chunk:
                break
            body += chunk
        if len(body) > max_bytes:
            raise CrlFetchError(f"{url}: larger than {max_bytes} bytes")
        return bytes(body)
    except OSError as exc:
        raise CrlFetchError(f"{url}: {exc.strerror or exc}") from None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _cache_name(url: str) -> str:
    return f"fetched-{hashlib.sha256(url.encode()).hexdigest()[:16]}.crl"


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class CrlRefresher:
    """Owns the TLS contexts built with the freshest CRLs: the outbound client's, and
    the listeners' through `TlsReloadable`."""

    def __init__(self, runtime: Runtime, listeners: Callable[[], Sequence[object]]) -> None:
        self.runtime = runtime
        self._listeners = listeners
        self._active: dict[str, _Crl] = {}
        self._built_for: tuple[TlsConfig, frozenset[str]] | None = None
        self._clients: dict[bool, ssl.SSLContext] = {}
        self._client_error: str | None = None
        self._stale: set[str] = set()
        self._reported: set[str] = set()  # rejected CRLs already reported
        self.effective_tls: TlsConfig = runtime.config.tls
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one refresh at a time (loop, reload, operator)
        self.refreshes = 0

    # --- what other components use ------------------------------------------------

    def client_context(self, *, check_hostname: bool) -> ssl.SSLContext:
        """The current outbound context; with `check_hostname` False the caller checks
        the peer's DN itself. Raises TlsError if none can be built."""
        if self._built_for is None or self._built_for[0] is not self._tls_base():
            self._rebuild(initial=False)
        ctx = self._clients.get(check_hostname)
        if ctx is None:
            raise TlsError(self._client_error or "no TLS client context")
        return ctx

    @property
    def stale_issuers(self) -> frozenset[str]:
        return frozenset(self._stale)

    @property
    def active(self) -> dict[str, tuple[str, dt.datetime | None]]:
        """Issuer → (source, nextUpdate) of the CRL in use (tests, monitoring)."""
        return {k: (v.source, v.crl.next_update_utc) for k, v in self._active.items()}

    def facts(self) -> list[CrlFact]:
        """Each CRL in use: issuer, thisUpdate, nextUpdate, stale (metrics, health)."""
        return [
            CrlFact(
                issuer=issuer,
                this_update=c.crl.last_update_utc,
                next_update=c.crl.next_update_utc,
                stale=issuer in self._stale,
            )
            for issuer, c in sorted(self._active.items())
        ]

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Load files and cached CRLs (no network), apply, then refresh in the background."""
        await self.refresh(fetch=False, initial=True)
        self._task = asyncio.create_task(self._loop(), name="crl-refresher")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def wake(self) -> None:
        self._wake.set()

    async def reload(self) -> None:
        """After a config reload: read the CRL files again and rebuild every context,
        the listeners' included, from the certificate and key files as they are now
        (a certificate renewed at the same path is a new one; the config alone would
        not show it)."""
        async with self._lock:
            self._built_for = None
            await self._refresh(fetch=False, initial=False)

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.refresh()
            except Exception:
                log.exception("tls.crl_refresh_failed")
            interval = self.runtime.config.limits.crl_refresh_interval_seconds
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)

    # --- one refresh ----------------------------------------------------------------

    def _tls_base(self) -> TlsConfig:
        return self.runtime.config.tls

    def _cache_dir(self) -> Path:
        return self.runtime.config.server.data_dir / "crl"

    async def refresh(self, *, fetch: bool = True, initial: bool = False) -> None:
        """Gather, verify, select, apply and check freshness (see the module docstring)."""
        async with self._lock:
            await self._refresh(fetch=fetch, initial=initial)

    async def _refresh(self, *, fetch: bool, initial: bool) -> None:
        tls = self._tls_base()
        self.refreshes += 1
        events: list[AuditEvent] = []
        if not tls.crl_files:
            self._active = {}
            self._rebuild(initial=initial)
            return
        anchors = _certificates(tls.trust_anchors)
        own = _certificates([tls.certificate]) if tls.certificate is not None else []
        issuers = {cert.subject: cert for cert in anchors}
        for cert in own:  # our chain file carries the issuing intermediate
            issuers.setdefault(cert.subject, cert)
        cache = self._cache_dir()
        await asyncio.to_thread(cache.mkdir, parents=True, exist_ok=True)

        candidates: list[_Crl] = list(self._active.values())
        raw: list[tuple[str, bytes]] = []
        for path in tls.crl_files:
            try:
                raw.append((str(path), await asyncio.to_thread(path.read_bytes)))
            except OSError as exc:
                log.error("tls.crl_file_unreadable", file=str(path), error=exc.strerror)
        urls = distribution_points([*anchors, *own])
        for url in urls:
            cached = cache / _cache_name(url)
            with contextlib.suppress(OSError):
                raw.append((url, await asyncio.to_thread(cached.read_bytes)))
        fetched_now: set[str] = set()
        if fetch and urls:
            fetched = await self._fetch_all(urls)
            fetched_now = {url for url, _ in fetched}
            raw += fetched
        for source, data in raw:
            for crl, problem in self._verified(data, issuers):
                if crl is None:
                    key = f"{source}|{problem}"
                    if key not in self._reported:
                        self._reported.add(key)
                        log.error("tls.crl_rejected", source=source, reason=problem)
                        events.append(CrlRejected(source=source, reason=problem))
                    continue
                candidates.append(dataclasses.replace(crl, source=source))
        best: dict[str, _Crl] = {}
        for cand in candidates:
            if cand.issuer not in best or cand.rank > best[cand.issuer].rank:
                best[cand.issuer] = cand
        # Keep what a distribution point served if it is as good as the best: a restart
        # without network then starts from it.
        for cand in candidates:
            if cand.source in fetched_now and cand.rank >= best[cand.issuer].rank:
                await asyncio.to_thread(
                    _write_atomically,
                    cache / _cache_name(cand.source),
                    cand.crl.public_bytes(serialization.Encoding.DER),
                )
        for issuer, c in best.items():
            previous = self._active.get(issuer)
            if not initial and (previous is None or previous.der_sha256 != c.der_sha256):
                log.info(
                    "tls.crl_updated",
                    issuer=issuer,
                    source=c.source,
                    next_update=str(c.crl.next_update_utc),
                )
                events.append(
                    CrlUpdated(
                        issuer=issuer,
                        source=c.source,
                        this_update=c.crl.last_update_utc.isoformat(),
                        next_update=(
                            c.crl.next_update_utc.isoformat() if c.crl.next_update_utc else None
                        ),
                        crl_number=c.number,
                    )
                )
        self._active = best
        self._rebuild(initial=initial)
        events += self._check_freshness(tls)
        if events:
            await self.runtime.store.record(*events)

    async def _fetch_all(self, urls: Sequence[str]) -> list[tuple[str, bytes]]:
        timeout = self.runtime.config.limits.crl_fetch_timeout_seconds

        async def one(url: str) -> tuple[str, bytes] | None:
            try:
                async with asyncio.timeout(timeout):
                    return url, await fetch_crl(url)
            except TimeoutError:
                log.warning("tls.crl_fetch_failed", url=url, error=f"timed out after {timeout}s")
            except CrlFetchError as exc:
                log.warning("tls.crl_fetch_failed", url=url, error=str(exc))
            return None

        results = await asyncio.gather(*(one(u) for u in urls))
        return [r for r in results if r is not None]

    @staticmethod
    def _verified(
        data: bytes, issuers: dict[x509.Name, x509.Certificate]
    ) -> list[tuple[_Crl | None, str]]:
        try:
            crls = _parse_crls(data)
        except ValueError as exc:
            return [(None, f"not a CRL: {exc}")]
        if not crls:
            return [(None, "no CRL in the data")]
        out: list[tuple[_Crl | None, str]] = []
        for crl in crls:
            issuer_name = crl.issuer.rfc4514_string()
            issuer = issuers.get(crl.issuer)
            if issuer is None:
                out.append((None, f"issuer {issuer_name} is not a trust anchor"))
                continue
            try:
                valid = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
            except (InvalidSignature, TypeError, ValueError):
                valid = False
            if not valid:
                out.append((None, f"signature does not verify with {issuer_name}'s key"))
                continue
            try:
                number: int | None = crl.extensions.get_extension_for_class(
                    x509.CRLNumber
                ).value.crl_number
            except x509.ExtensionNotFound:
                number = None
            der = crl.public_bytes(serialization.Encoding.DER)
            sha = hashlib.sha256(der).hexdigest()
            out.append((_Crl(crl, "", issuer_name, number, sha), ""))
        return out

    def _rebuild(self, *, initial: bool) -> None:
        """Build the contexts for the current CRL set if it or the config changed."""
        base = self._tls_base()
        key = (base, frozenset(c.der_sha256 for c in self._active.values()))
        if self._built_for is not None and self._built_for == key:
            return
        tls = base
        if base.crl_files and self._active:
            path = self._cache_dir() / ACTIVE_FILE
            pem = b"".join(
                c.crl.public_bytes(serialization.Encoding.PEM)
                for c in sorted(self._active.values(), key=lambda c: c.issuer)
            )
            _write_atomically(path, pem)
            tls = dataclasses.replace(base, crl_files=(path,))
        clients: dict[bool, ssl.SSLContext] = {}
        try:
            for check_hostname in (True, False):
                ctx = client_context(tls)
                ctx.check_hostname = check_hostname
                clients[check_hostname] = ctx
            self._client_error = None
        except TlsError as exc:
            self._client_error = str(exc)
            log.error("tls.client_context_failed", error=str(exc))
        self._clients = clients
        self.effective_tls = tls
        self._built_for = key
        for listener in self._listeners():
            if isinstance(listener, TlsReloadable):
                try:
                    listener.replace_tls(tls)
                except TlsError as exc:
                    log.error("tls.listener_context_failed", error=str(exc))
        if not initial:
            log.info("tls.contexts_swapped", crls=len(self._active))

    def _check_freshness(self, tls: TlsConfig) -> list[AuditEvent]:
        now = self.runtime.clock()
        grace = dt.timedelta(seconds=tls.crl_grace_seconds)
        events: list[AuditEvent] = []
        stale_now: set[str] = set()
        for issuer, c in self._active.items():
            next_update = c.crl.next_update_utc
            if next_update is None or now > next_update + grace:
                stale_now.add(issuer)
                if issuer not in self._stale:
                    log.error(
                        "tls.crl_stale",
                        issuer=issuer,
                        next_update=str(next_update),
                        grace_seconds=tls.crl_grace_seconds,
                        message=(
                            f"no fresh CRL for {issuer} (nextUpdate {next_update} + "
                            f"{tls.crl_grace_seconds}s grace passed): TLS with certificates "
                            "it issued fails closed until a fresh CRL is loaded"
                        ),
                    )
                    events.append(
                        CrlStale(
                            issuer=issuer,
                            next_update=next_update.isoformat() if next_update else None,
                            grace_seconds=tls.crl_grace_seconds,
                        )
                    )
        for issuer in self._stale - stale_now:
            log.info("tls.crl_fresh_again", issuer=issuer)
        self._stale = stale_now
        return events
