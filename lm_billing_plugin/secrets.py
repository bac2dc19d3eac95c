"""Encryption at rest of hosting-server TclPort passwords (Fernet, key rotation by MultiFernet).
A password goes in once and is never shown back: the pages only ever say whether one is set."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

_UNDECRYPTABLE = ("a stored TclPort password cannot be decrypted with LM_BILLING_ENCRYPTION_KEYS "
                  "(was the key that encrypted it removed?); enter the password again")


class SecretsError(RuntimeError):
    """A password cannot be stored or read; the message says which setting to fix."""


class SecretBox:
    """Encrypts with the first key of LM_BILLING_ENCRYPTION_KEYS, decrypts with any of them."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._fernet: MultiFernet | None = None
        if keys:
            try:
                self._fernet = MultiFernet([Fernet(key.encode("ascii")) for key in keys])
            except (ValueError, UnicodeEncodeError) as exc:
                raise SecretsError(
                    "LM_BILLING_ENCRYPTION_KEYS holds a value that is not a Fernet key "
                    "(make one with `flask lm-billing generate-key`)"
                ) from exc

    @property
    def configured(self) -> bool:
        return self._fernet is not None

    def encrypt(self, plaintext: str) -> str:
        if self._fernet is None:
            raise SecretsError(
                "cannot store a TclPort password: set LM_BILLING_ENCRYPTION_KEYS "
                "(make a key with `flask lm-billing generate-key`)"
            )
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def rotate(self, token: str) -> str:
        """``token`` encrypted again with the first key (same plaintext), so the keys after
        it can be removed. Raises SecretsError when no key decrypts it."""
        if self._fernet is None:
            raise SecretsError(
                "cannot re-encrypt the TclPort passwords: LM_BILLING_ENCRYPTION_KEYS is not set"
            )
        try:
            return self._fernet.rotate(token.encode("ascii")).decode("ascii")
        except InvalidToken as exc:
            raise SecretsError(_UNDECRYPTABLE) from exc

    def decrypt(self, token: str) -> str:
        if self._fernet is None:
            raise SecretsError(
                "a TclPort password is stored but LM_BILLING_ENCRYPTION_KEYS is not set"
            )
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except InvalidToken as exc:
            raise SecretsError(_UNDECRYPTABLE) from exc


def generate_key() -> str:
    return Fernet.generate_key().decode("ascii")
