"""asterisk-outbound: the shared core (no runtime imports here)."""
