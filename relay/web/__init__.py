"""The optional HTTP listener: metrics, health, client autoconfiguration.

Pure parts: `health` (the checks), `autoconfig` (the Thunderbird and Autodiscover
answers), `dns` (the records to publish). Edge: `server` (aiohttp), `cli`
(`mss-relay dns-records`).
"""
