"""mss-relay: MSSanté secure health mail daemon."""
