"""Every wire name, declared once: dialplan variables, contexts, AGI routes, Redis keys.

The dialplan in `asterisk_conf/` uses the same names; a test checks they agree.
"""

from __future__ import annotations

# --- dialplan channel variables (set by Originate, read by dialplan and AGI) ---
VAR_ATTEMPT_ID = "OUTBOUND_ATTEMPT_ID"
VAR_CAMPAIGN_ID = "OUTBOUND_CAMPAIGN_ID"
VAR_CONTACT_ID = "OUTBOUND_CONTACT_ID"
VAR_NUMBER = "OUTBOUND_NUMBER"
VAR_TRUNK_DIAL = "OUTBOUND_TRUNK_DIAL"
VAR_RING_TIMEOUT = "OUTBOUND_RING_TIMEOUT"
VAR_AGENT = "OUTBOUND_AGENT"
VAR_NEXT = "OUTBOUND_NEXT"  # set by the classify AGI: an extension of CTX_AFTER_CLASSIFY
VAR_AGI_BASE = "OUTBOUND_AGI_BASE"
VAR_ABANDON_PROMPT = "OUTBOUND_ABANDON_PROMPT"
VAR_MESSAGE = "OUTBOUND_MESSAGE"  # left on an answering machine
# Abandoned person (no free agent): the opt-out key, seconds to press it after the
# message, the confirmation prompt (set by classify), the key Read() got, and "1" once
# the optout route has recorded the do-not-call entry.
VAR_OPTOUT_KEY = "OUTBOUND_OPTOUT_KEY"
VAR_OPTOUT_WAIT = "OUTBOUND_OPTOUT_WAIT"
VAR_OPTOUT_CONFIRM = "OUTBOUND_OPTOUT_CONFIRM"
VAR_OPTOUT_DIGIT = "OUTBOUND_OPTOUT_DIGIT"
VAR_OPTOUT_DONE = "OUTBOUND_OPTOUT_DONE"

# --- dialplan contexts (asterisk_conf/extensions_outbound.conf) ---
CTX_DIAL = "outbound-dial"
CTX_DIAL_RESULT = "outbound-dial-result"
CTX_ANSWERED = "outbound-answered"
CTX_AFTER_CLASSIFY = "outbound-after-classify"
CTX_CONNECT = "outbound-connect"
CTX_AGENT = "outbound-agent"
CTX_FEATURES = "outbound-features"
CTX_AGI_SET = "outbound-agi-set"  # Gosub target: sets a variable from base64 (AgiSession.set_text)
CTX_SIM_CONTACTS = "sim-contacts"
CTX_SIM_PHONES = "sim-phones"

# --- ConfBridge profiles and names ---
CONFBRIDGE_PROFILE = "outbound_agent_bridge"
CONFBRIDGE_AGENT_USER = "outbound_agent_user"
CONFBRIDGE_CONTACT_USER = "outbound_contact_user"

# --- UserEvents raised by the dialplan ---
EVENT_DIAL_RESULT = "OutboundDialResult"
# The reserved agent left between classify and the join: the contact was abandoned.
EVENT_CONNECT_ABANDONED = "OutboundConnectAbandoned"
EVENT_AGI_FAILED = "OutboundAgiFailed"


def agent_bridge(agent_id: str) -> str:
    """Name of an agent's own ConfBridge, where the desk phone waits for contacts."""
    return f"outbound-agent-{agent_id}"


# --- FastAGI routes ---
AGI_CLASSIFY = "classify"
AGI_FEATURES = "features"
AGI_OPTOUT = "optout"
AGI_FAX = "fax"  # the `fax` extension (CNG detected) records the result

# --- Redis keys (prefix keeps a shared Redis tidy) ---
REDIS_PREFIX = "outbound:"


def key_dial_queue(campaign_id: int) -> str:
    return f"{REDIS_PREFIX}queue:{campaign_id}"


def key_leases(campaign_id: int) -> str:
    return f"{REDIS_PREFIX}leases:{campaign_id}"


def key_commands(server: str) -> str:
    return f"{REDIS_PREFIX}commands:{server}"


def key_agent_reservation(agent_id: str) -> str:
    """An agent reserved by a dialer worker for the call it is placing (SET NX, TTL'd):
    two ticks or two workers never give one agent two calls."""
    return f"{REDIS_PREFIX}reserved:agent:{agent_id}"


KEY_EVENTS = f"{REDIS_PREFIX}events"


# --- call actions (ami_bridge/control.py; contexts in extensions_outbound.conf) ---
CTX_HOLD = "outbound-hold"  # a held contact hears music on hold here
CTX_TRANSFER = "outbound-transfer"  # blind transfer: the contact dials the target
CTX_TARGET_DIAL = "outbound-target-dial"  # a third party's leg, originated into the agent
CTX_PAIR = "outbound-pair"  # consultation completed as a transfer: target + contact
VAR_TARGET_DIAL = "OUTBOUND_TARGET_DIAL"  # dial template of a target (${NUMBER} inside)
VAR_PEER = "OUTBOUND_PEER"  # channel name the target bridges with in CTX_PAIR


# --- desk-phone feature codes (asterisk_conf/extensions_outbound.conf, agi_scripts/features.py)
CTX_PHONE_CODES = "outbound-phone-codes"  # the admin includes this in the phones' context
CTX_PHONE_SESSION = "outbound-phone-session"  # what the codes run (login, ready, ...)
VAR_PHONE = "OUTBOUND_PHONE"  # the phone the features AGI identified (PJSIP/1001)
VAR_CODE_RESULT = "OUTBOUND_CODE_RESULT"  # ok / wrong / locked / invalid / none / refused / error
EVENT_PHONE_LOGIN = "OutboundPhoneLogin"  # the phone's leg is about to join the agent's bridge
EVENT_PHONE_CODE = "OutboundPhoneCode"  # *52-*54 done (Code, Result)


def key_pin_failures(kind: str, subject: str) -> str:
    """Wrong PINs counted per (agent id, phone) pair, per agent id or per phone (kind
    "pair" / "agent" / "phone"); TTL'd."""
    return f"{REDIS_PREFIX}pin:fail:{kind}:{subject}"


def key_pin_lock(kind: str, subject: str) -> str:
    """A PIN lockout of an agent id or a phone; expires when the lock ends."""
    return f"{REDIS_PREFIX}pin:lock:{kind}:{subject}"


# Dial queue (outbound/dial_queue.py): besides key_dial_queue (the ordered part) and
# key_leases (contact -> owner), one key per part below, all per campaign.
QUEUE_PARTS = frozenset(
    {
        "top",  # rejected / pushed back / reclaimed: before everything, first in first out
        "later",  # pushed with a due time still to come
        "meta",  # contact -> its ordered score (priority, due), to put it back in place
        "seq",  # counter giving the top its FIFO order
        "expiry",  # leased contact -> lease expiry (epoch)
        "reclaims",  # contact -> how often its lease expired
        "rebuild",  # a running rebuild's token
        "journal",  # contacts touched while a rebuild runs
        "staging",  # the ordered part being rebuilt
        "staging_meta",  # its meta
        "swept",  # when enqueue_due last looked at the database
    }
)


def key_queue_part(campaign_id: int, part: str) -> str:
    """A dial-queue key of one campaign other than the ordered part and the lease owners."""
    if part not in QUEUE_PARTS:
        raise ValueError(f"unknown dial-queue part {part!r}")
    return f"{REDIS_PREFIX}queue:{campaign_id}:{part}"


def key_agent_inbox(agent_id: str) -> str:
    """An agent's own notifications (campaign loaded / started): a capped stream, one entry
    per notification, deleted when the agent acknowledges it (outbound.campaigns.notify)."""
    return f"{REDIS_PREFIX}inbox:agent:{agent_id}"


# Callbacks (outbound/callbacks_fire.py): a due callback, once fired (QUEUED in the
# database), waits in its campaign's callback queue for the bridge to route it to an agent.
def key_callback_queue(campaign_id: int) -> str:
    """A campaign's fired callbacks: a sorted set, member the callback id zero-padded to 15
    digits, score fired_at (UTC epoch). Rebuilt from the database when its marker is gone."""
    return f"{REDIS_PREFIX}callbacks:{campaign_id}"


def key_callback_queue_built(campaign_id: int) -> str:
    """Present once the campaign's callback queue was built from the database (missing
    after a FLUSHALL: the next sweep rebuilds the queue)."""
    return f"{REDIS_PREFIX}callbacks:{campaign_id}:built"


# Callback ids already queued and announced (callback_due), scored by fired_at: makes the
# publish after the claiming commit idempotent (a lost publish is redone, never doubled).
KEY_CALLBACKS_PUBLISHED = f"{REDIS_PREFIX}callbacks:published"
# When the sweep last looked for fired callbacks whose publish was lost (UTC epoch): the
# next one looks back to there, so a worker down for a while misses none.
KEY_CALLBACKS_RECONCILED = f"{REDIS_PREFIX}callbacks:reconciled"
# Every bridge's last heartbeat (hash: server -> JSON); read by /healthz and /metrics.
KEY_BRIDGE_HEARTBEATS = f"{REDIS_PREFIX}health:bridges"
