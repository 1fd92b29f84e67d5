"""Models the kit ships or builds locally (no model hub is reachable)."""
