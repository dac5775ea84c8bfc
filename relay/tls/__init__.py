"""TLS: the one place SSL contexts are built (`context`), peer certificate identity and
DN comparison (`peer`), the MSSanté trust-space whitelist (`trust_space`) and the
development PKI (`pki`).

Import the submodules directly; this package imports nothing so that the pure
modules (`peer`, `trust_space`) do not pull in `ssl` and `socket`.
"""
