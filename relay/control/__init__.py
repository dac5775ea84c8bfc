"""The control socket: a Unix socket the running daemon listens on, behind
`mss-relay reload`, `status`, `who` and `kick`.

- `protocol`: the wire format, one JSON object per line each way (pure);
- `model`: what the commands answer, as frozen dataclasses, and their text (pure);
- `paths`: where the socket is (pure);
- `server`: the daemon's side (asyncio, peer credentials, the dispatch table);
- `client`: the CLI's side (a blocking socket);
- `cli`: the subcommands.
"""
