"""`mss-relay dns-records`: the DNS records that let mail clients find this server.

Prints zone-file lines for every local domain: RFC 6186 / RFC 8314 SRV records for
IMAP and submission, the autoconfig and autodiscover names (`relay.web.dns`). It reads
only the config file; nothing is published by it.

Exit status: 0 printed, 2 bad config.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]

EXIT_OK = 0
EXIT_BAD_INPUT = 2


def cmd_dns_records(args: argparse.Namespace) -> int:
    from relay.config import ConfigError, load
    from relay.web.dns import dns_records

    try:
        config = load(Path(args.config))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_BAD_INPUT
    sys.stdout.write(dns_records(config))
    return EXIT_OK


def register(subparsers: Any) -> None:
    """Add `dns-records` to the `mss-relay` parser."""
    s = subparsers.add_parser(
        "dns-records",
        help="print the SRV records and autoconfig names to publish (RFC 6186, RFC 8314)",
    )
    s.add_argument("--config", "-c", default="/etc/mss-relay/relay.toml")
    s.set_defaults(func=cmd_dns_records)
