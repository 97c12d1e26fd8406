"""The API's optional TLS (``api.tls``): a server context that speaks TLS 1.2 or newer only.

The certificate and key are loaded once at start-up; a file that cannot be read or a key that
does not fit the certificate is a config error naming the file, never its content.
"""

from __future__ import annotations

import ssl

from cutover.config import TlsSpec
from cutover.errors import ConfigError

__all__ = ["server_ssl_context"]


class _EncryptedKeyError(Exception):
    pass


def _no_passphrase() -> bytes:
    # without a callback OpenSSL would prompt on the terminal for an encrypted key's passphrase
    raise _EncryptedKeyError


def server_ssl_context(tls: TlsSpec) -> ssl.SSLContext:
    """An SSLContext serving ``tls.cert_file`` with ``tls.key_file`` (blocking file reads)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(
            certfile=tls.cert_file, keyfile=tls.key_file, password=_no_passphrase
        )
    except _EncryptedKeyError:
        reason = "the key is encrypted; give an unencrypted key file (readable by the daemon only)"
    except ssl.SSLError as exc:
        reason = f"not a PEM certificate and its matching private key ({exc.reason or exc})"
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
    else:
        return context
    what = f"the certificate {tls.cert_file} with the key {tls.key_file}"
    raise ConfigError([f"api.tls: cannot load {what}: {reason}"])
