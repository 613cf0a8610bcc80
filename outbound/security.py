"""Password and PIN hashing (argon2id). Nothing else in the project hashes secrets."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from .errors import Invalid

_hasher = PasswordHasher()  # argon2id with the library's recommended parameters

MIN_PASSWORD = 8


def hash_secret(secret: str) -> str:
    return _hasher.hash(secret)


def verify_secret(stored: str | None, given: str) -> bool:
    """True when `given` matches the stored argon2 hash; False for a mismatch or no hash."""
    if not stored:
        return False
    try:
        return _hasher.verify(stored, given)
    except (VerificationError, InvalidHashError):
        return False


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise Invalid(f"password must have at least {MIN_PASSWORD} characters")
    return password


def check_pin(pin: str) -> str:
    if not (pin.isdigit() and 4 <= len(pin) <= 12):
        raise Invalid("PIN must be 4 to 12 digits (it is typed on a desk phone keypad)")
    return pin
