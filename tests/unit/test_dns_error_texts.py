"""DNS error texts: the server's rcode, its TSIG error, and every cause that fits on any server.

Answers are built as each server sends them (the table in
:func:`cutover.routers.dns_common.rcode_error`; the real servers are in
tests/integration/test_knot.py) and read the way the routers read them: verified against the
signed message they answer, a refusal kept even when it is not signed.
"""

from __future__ import annotations

import base64

import dns.exception
import dns.message
import dns.rcode
import dns.tsig
import dns.update
import pytest

from cutover.errors import PermanentError, TransientError
from cutover.routers.dns_common import KeyId, _answer, rcode_error

ZONE = "example.test."
SECRET = base64.b64encode(b"k" * 32).decode()
KEY = KeyId("cutover-key.", "hmac-sha256")
WHERE = "router 'dns': DNS server 127.0.0.1:53"
DOING = "setting 50% green (TSIG key 'cutover-key.')"

NOT_SERVED = f"the server does not serve zone {ZONE} as a primary"
UNKNOWN = "the server knows no TSIG key 'cutover-key.' with algorithm hmac-sha256"
SECRET_DIFFERS = "the secret of TSIG key 'cutover-key.' differs from the server's"
DENIED = f"the update policy/ACL of zone {ZONE} does not allow key 'cutover-key.' (from this host)"


def signed_update() -> dns.update.UpdateMessage:
    key = dns.tsig.Key(KEY.name, SECRET, dns.tsig.HMAC_SHA256)
    update = dns.update.UpdateMessage(ZONE, keyring=key)
    update.present(ZONE, "SOA")
    update.to_wire()  # signs it: its MAC is what the answer is verified against
    return update


def answer_to(
    request: dns.message.Message, rcode: dns.rcode.Rcode, *, signed: bool, tsig_error: int = 0
) -> dns.message.Message:
    """The server's answer as the router reads it (:func:`_answer`, as over the wire)."""
    response = dns.message.make_response(request)
    response.set_rcode(rcode)
    if not signed:
        response.tsig = None
    elif tsig_error:
        response.use_tsig(request.keyring, tsig_error=tsig_error)
    return _answer(response.to_wire(), request)


def message(answer: dns.message.Message, key: KeyId | None = KEY) -> str:
    error = rcode_error(answer, WHERE, DOING, zone=ZONE, key=key)
    assert isinstance(error, PermanentError)
    assert SECRET not in str(error)
    return str(error).removeprefix(f"{WHERE}: {DOING}: ")


@pytest.mark.parametrize(
    ("server_says", "rcode", "signed", "tsig_error", "text"),
    [
        (
            "Knot: ACL denial; BIND, Knot: unknown key",
            dns.rcode.NOTAUTH,
            True,
            dns.rcode.BADKEY,
            f"NOTAUTH, TSIG error BADKEY: {UNKNOWN}; or {DENIED}",
        ),
        (
            "BIND, Knot: wrong secret",
            dns.rcode.NOTAUTH,
            True,
            dns.rcode.BADSIG,
            f"NOTAUTH, TSIG error BADSIG: {SECRET_DIFFERS}",
        ),
        (
            "clocks apart",
            dns.rcode.NOTAUTH,
            True,
            dns.rcode.BADTIME,
            "NOTAUTH, TSIG error BADTIME: the clocks of this host and the server differ by more"
            " than 300 s (fix NTP)",
        ),
        (
            "Knot: zone not served",
            dns.rcode.NOTAUTH,
            False,
            0,
            f"NOTAUTH, unsigned: {NOT_SERVED}; or {UNKNOWN}; or {SECRET_DIFFERS}",
        ),
        ("BIND, PowerDNS: zone not served", dns.rcode.NOTAUTH, True, 0, f"NOTAUTH: {NOT_SERVED}"),
        (
            "BIND, PowerDNS: policy denies the key",
            dns.rcode.REFUSED,
            True,
            0,
            f"REFUSED: {DENIED}; or {NOT_SERVED}",
        ),
        (
            "PowerDNS: unknown key or wrong secret",
            dns.rcode.REFUSED,
            False,
            0,
            f"REFUSED, unsigned: {UNKNOWN}; or {SECRET_DIFFERS}; or {DENIED}; or {NOT_SERVED}",
        ),
        (
            "name outside the zone",
            dns.rcode.NOTZONE,
            True,
            0,
            "NOTZONE: the name is not inside the zone",
        ),
    ],
)
def test_a_refused_update_shows_the_rcode_and_every_cause_that_fits(
    server_says: str, rcode: dns.rcode.Rcode, signed: bool, tsig_error: int, text: str
) -> None:
    assert message(answer_to(signed_update(), rcode, signed=signed, tsig_error=tsig_error)) == text


@pytest.mark.parametrize(
    ("rcode", "text"),
    [
        (
            dns.rcode.REFUSED,
            f"REFUSED: {NOT_SERVED}; or the server does not answer queries from this host",
        ),
        (dns.rcode.NOTAUTH, f"NOTAUTH: {NOT_SERVED}"),
        (dns.rcode.NOTIMP, "NOTIMP: the server does not implement it"),
        (dns.rcode.YXDOMAIN, "YXDOMAIN"),
    ],
)
def test_a_refused_query_names_no_key(rcode: dns.rcode.Rcode, text: str) -> None:
    query = dns.message.make_query(f"www.{ZONE}", "A")
    assert message(answer_to(query, rcode, signed=False), key=None) == text


def test_servfail_is_transient() -> None:
    answer = answer_to(signed_update(), dns.rcode.SERVFAIL, signed=True)
    error = rcode_error(answer, WHERE, DOING, zone=ZONE, key=KEY)
    assert isinstance(error, TransientError)
    assert str(error) == f"{WHERE}: {DOING}: SERVFAIL (server failure; may pass)"


def test_a_success_must_verify() -> None:
    update = signed_update()
    assert answer_to(update, dns.rcode.NOERROR, signed=True).had_tsig
    with pytest.raises(dns.exception.FormError, match="TSIG"):
        answer_to(update, dns.rcode.NOERROR, signed=False)
    with pytest.raises(dns.tsig.PeerBadKey):  # a success with a TSIG error is no success
        answer_to(update, dns.rcode.NOERROR, signed=True, tsig_error=dns.rcode.BADKEY)
