"""Link and action tokens: genuine ones read back, anything else is a TokenError that repeats nothing secret."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib.approvals import tokens
from chalicelib.approvals.tokens import ActionGrant, LinkGrant, TokenError, WeakKey

from .conftest import SIGNING_KEY as KEY

NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
EXPIRES = NOW + timedelta(hours=24)
RID = "apr-0123456789abcdef0123"
OTHER_KEY = "another-key-that-is-long-enough-0123456789"


def link(**kw):
    args = {"request_id": RID, "approver": "alice.smith", "expires_at": EXPIRES} | kw
    return tokens.mint_link(KEY, args["request_id"], args["approver"], args["expires_at"])


def action(key=KEY, what="approve", gateway="vgw-0123456789abcdef0"):
    return tokens.mint_action(key, RID, what, gateway, EXPIRES)


def test_link_round_trip():
    assert tokens.read_link(KEY, link(), NOW) == LinkGrant(RID, "alice.smith", EXPIRES)


@pytest.mark.parametrize("what, gateway", [("approve", "vgw-12345678"), ("approve", None), ("reject", None)])
def test_action_round_trip(what, gateway):
    assert tokens.read_action(KEY, action(what=what, gateway=gateway), NOW) == ActionGrant(RID, what, gateway, EXPIRES)


def test_tokens_are_compact_url_safe_and_unpadded():
    longest = link(approver="a" * 64)
    for token in (link(), longest, action()):
        assert len(token) < 200 and "=" not in token
        assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def flip(token: str, index: int) -> str:
    swapped = "A" if token[index] != "A" else "B"
    return token[:index] + swapped + token[index + 1 :]


def resigned_body(body: bytes) -> str:
    """A token whose body says something else, with a signature made without the key."""
    return base64.urlsafe_b64encode(body).rstrip(b"=").decode() + "." + link().split(".")[1]


@pytest.mark.parametrize(
    "name, make, read",
    [
        ("forged signature", lambda: flip(link(), len(link()) - 2), tokens.read_link),
        ("tampered body", lambda: flip(link(), 3), tokens.read_link),
        (
            "another approver's body",
            lambda: resigned_body(f"{RID}|mallory|{int(EXPIRES.timestamp())}".encode()),
            tokens.read_link,
        ),
        ("wrong key", lambda: tokens.mint_link(OTHER_KEY, RID, "alice", EXPIRES), tokens.read_link),
        ("action token used as a link", lambda: action(), tokens.read_link),
        ("link token used as an action", lambda: link(), tokens.read_action),
        (
            "swapped action",
            lambda: action(what="reject").split(".")[0] + "." + action().split(".")[1],
            tokens.read_action,
        ),
        ("no signature", lambda: link().split(".")[0], tokens.read_link),
        ("empty", lambda: "", tokens.read_link),
        ("only a dot", lambda: ".", tokens.read_link),
        ("padding", lambda: link() + "=", tokens.read_link),
        ("three parts", lambda: link() + ".AAAA", tokens.read_link),
        ("non-ascii", lambda: link() + "é", tokens.read_link),
        ("too long", lambda: "A" * 5000 + "." + "A" * 43, tokens.read_link),
        ("not a string", lambda: None, tokens.read_link),
    ],
)
def test_bad_tokens_are_401_and_repeat_nothing(name, make, read):
    token = make()
    with pytest.raises(TokenError) as refused:
        read(KEY, token, NOW)
    assert refused.value.status == 401, name
    text = str(refused.value)
    assert KEY not in text and OTHER_KEY not in text
    assert not (isinstance(token, str) and token and token in text)
    assert all(part not in text for part in (token or "").split(".") if len(part) > 8)


@pytest.mark.parametrize("read, make", [(tokens.read_link, link), (tokens.read_action, action)])
def test_expiry_is_410_at_the_second(read, make):
    token = make()
    assert read(KEY, token, EXPIRES - timedelta(seconds=1)).expires_at == EXPIRES
    for moment in (EXPIRES, EXPIRES + timedelta(days=30)):
        with pytest.raises(TokenError) as refused:
            read(KEY, token, moment)
        assert refused.value.status == 410 and "expired at 2026-11-23T09:00:00Z" in refused.value.reason


def test_the_signature_is_checked_before_the_expiry():
    """A forged, expired token says forged: the expiry of an unsigned body is not believed."""
    with pytest.raises(TokenError) as refused:
        tokens.read_link(KEY, flip(link(), len(link()) - 2), EXPIRES + timedelta(days=1))
    assert refused.value.status == 401


@pytest.mark.parametrize("key", ["", "s3cr3t-k3y", "x" * 31])
def test_a_weak_key_is_refused_without_showing_it(key):
    for call in (
        lambda: tokens.mint_link(key, RID, "alice", EXPIRES),
        lambda: tokens.read_link(key, link(), NOW),
        lambda: tokens.mint_action(key, RID, "approve", None, EXPIRES),
        lambda: tokens.read_action(key, action(), NOW),
    ):
        with pytest.raises(WeakKey) as weak:
            call()
        assert "signing_key" in str(weak.value) and (not key or key not in str(weak.value))


def test_a_32_character_key_is_enough():
    key = "0123456789abcdef0123456789abcdef"
    token = tokens.mint_link(key, RID, "alice", EXPIRES)
    assert tokens.read_link(key, token, NOW).approver == "alice"


@pytest.mark.parametrize(
    "call",
    [
        lambda: tokens.mint_link(KEY, "dxvif-1", "alice", EXPIRES),
        lambda: tokens.mint_link(KEY, RID, "alice|admin", EXPIRES),
        lambda: tokens.mint_link(KEY, RID, "", EXPIRES),
        lambda: tokens.mint_link(KEY, RID, "alice", datetime(2026, 11, 23)),  # naive
        lambda: tokens.mint_action(KEY, RID, "delete", None, EXPIRES),
        lambda: tokens.mint_action(KEY, RID, "approve", "vgw-1|x", EXPIRES),
    ],
)
def test_mint_refuses_what_it_could_not_read_back(call):
    with pytest.raises(ValueError):
        call()


def test_link_expiry_is_the_earlier_of_ttl_and_request():
    assert tokens.link_expiry(NOW, NOW + timedelta(days=3), timedelta(hours=24)) == NOW + timedelta(hours=24)
    assert tokens.link_expiry(NOW, NOW + timedelta(hours=2), timedelta(hours=24)) == NOW + timedelta(hours=2)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("latin-1"))))
def test_random_strings_only_ever_raise_token_error(text):
    for read in (tokens.read_link, tokens.read_action):
        with pytest.raises(TokenError) as refused:
            read(KEY, text, NOW)
        assert refused.value.status == 401


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.binary(min_size=0, max_size=40))
def test_random_well_formed_tokens_only_ever_raise_token_error(body, mac):
    token = (
        base64.urlsafe_b64encode(body).rstrip(b"=").decode() + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    )
    for read in (tokens.read_link, tokens.read_action):
        with pytest.raises(TokenError) as refused:
            read(KEY, token, NOW)
        assert refused.value.status == 401


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2000), st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef0123456789-_."))
def test_any_one_character_change_is_refused(index, char):
    token = link()
    index %= len(token)
    if token[index] == char:
        return
    changed = token[:index] + char + token[index + 1 :]
    with pytest.raises(TokenError):
        tokens.read_link(KEY, changed, NOW)
