"""mss-relay: MSSanté secure health mail daemon."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mss-relay")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
