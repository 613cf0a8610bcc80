"""Domain errors. They carry no HTTP codes: the web layer and the CLI map them."""


class OutboundError(Exception):
    """Base of every error the core raises on purpose; its message is for a person."""


class NotFound(OutboundError):
    """The named campaign, contact, agent or callback does not exist."""


class Invalid(OutboundError):
    """Input failed validation; nothing was changed."""


class Conflict(OutboundError):
    """The request clashes with the current state (e.g. an illegal lifecycle transition)."""
