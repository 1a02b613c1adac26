"""The pages' own token check (remediation/signin.py), with plain values: keys made here,
claims written out, the time given. No plane, no network."""

import json

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from remediation.signin import (
    KEYS_TTL_SECONDS,
    REFRESH_FLOOR_SECONDS,
    RETRY_SECONDS,
    Refusal,
    SignIn,
    Tenant,
    bearer,
    verify,
)

TENANT_ID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
OTHER_TENANT = "f8cdef31-a31e-4b4a-93e4-5f571e91255a"
ISSUER = f"https://login.microsoftonline.com/{TENANT_ID}/v2.0"
CLIENT = "c0ffee00-0000-4000-8000-000000000001"
NOW = 1_800_000_000
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
TENANT = Tenant(issuer=ISSUER, keys={"k1": KEY.public_key()})


def token(key=KEY, kid="k1", algorithm="RS256", **claims) -> str:
    body = {
        "aud": CLIENT,
        "iss": ISSUER,
        "iat": NOW - 60,
        "nbf": NOW - 60,
        "exp": NOW + 3600,
        "tid": TENANT_ID,
        "azp": "04b07795-8ddb-461a-bbee-02f9e1bf7b46",  # the client that asked (Azure CLI)
        "roles": ["Remediation.Read"],
    } | claims
    body = {name: value for name, value in body.items() if value is not None}
    headers = {} if kid is None else {"kid": kid}  # None: a token whose header names no key
    return jwt.encode(body, key, algorithm=algorithm, headers=headers)


def check(value: str, allowed=("Remediation.Read",), now=NOW):
    return verify(value, TENANT, CLIENT, allowed, now)


def test_a_token_from_the_tenant_for_the_app_with_the_role_passes():
    assert check(token()) is None


def test_a_group_member_passes_when_the_group_is_allowed():
    group = "9b4f1a7e-0000-4000-8000-0000000000aa"
    assert check(token(roles=None, groups=[group.upper()]), allowed=(group,)) is None


NOT_THIS_TENANT = (
    "the token is not from this app's tenant, or is a v1.0 token (set "
    "requestedAccessTokenVersion to 2 in the app registration)"
)


@pytest.mark.parametrize(
    ("value", "status", "reason"),
    [
        (token(key=OTHER_KEY), 401, "the token's signature does not verify"),
        (token(kid="unknown"), 401, "the token is signed by a key the tenant does not publish"),
        (token(kid=None), 401, "the token is signed by a key the tenant does not publish"),
        (token(exp=NOW - 61), 401, "the token has expired: get a new one"),
        (token(nbf=NOW + 61), 401, "the token is not valid yet (nbf)"),
        (
            token(aud="https://management.azure.com"),
            401,
            "the token is for another application (aud)",
        ),
        (token(aud=f"api://{CLIENT}"), 401, "the token is for another application (aud)"),
        (token(iss=f"https://login.microsoftonline.com/{OTHER_TENANT}/v2.0"), 401, NOT_THIS_TENANT),
        (token(iss=f"https://sts.windows.net/{TENANT_ID}/"), 401, NOT_THIS_TENANT),
        (token(exp=None), 401, "the token is not valid: MissingRequiredClaimError"),
        (token(exp="soon"), 401, "the token's exp or nbf is not a time"),
        (token(nbf="now"), 401, "the token's exp or nbf is not a time"),
        (
            token(roles=["Remediation.Write"]),
            403,
            "signed in, but holds none of the roles or groups the pages allow",
        ),
        (
            token(roles="Remediation.Read"),  # a string is no list
            403,
            "signed in, but holds none of the roles or groups the pages allow",
        ),
        (
            token(roles=None, _claim_names={"groups": "src1"}),
            403,
            "the token lists too many groups to carry them (group overage): allow an app role "
            "instead",
        ),
        (
            jwt.encode(
                {"aud": CLIENT}, "a-secret-shared-by-anyone-who-reads-the-code", algorithm="HS256"
            ),
            401,
            "the token is not signed with RS256, as Entra signs",
        ),
        ("a.b.c", 401, "the bearer token is not a JWT"),
        # An ID token for the same app: same aud and iss, roles even, but no azp.
        (token(azp=None), 401, "not an access token (no azp): an ID token opens no page"),
        (token(azp=None, exp=None), 401, "the token is not valid: MissingRequiredClaimError"),
    ],
)
def test_a_token_failing_any_check_is_refused_with_the_check_it_failed(value, status, reason):
    assert check(value) == Refusal(status, reason)


def test_a_token_without_nbf_is_judged_by_its_expiry():
    assert check(token(nbf=None)) is None


def test_clock_skew_of_a_minute_is_allowed_and_no_more():
    assert check(token(exp=NOW - 60)) is None
    assert check(token(nbf=NOW + 60)) is None
    assert check(token(exp=NOW - 61)) is not None


def test_an_unsigned_token_is_refused():
    unsigned = jwt.encode({"aud": CLIENT, "iss": ISSUER, "exp": NOW + 60}, None, algorithm="none")
    assert check(unsigned) == Refusal(401, "the token is not signed with RS256, as Entra signs")


SIGN_IN = Refusal(401, "sign in: send an Entra access token as 'Authorization: Bearer'")
NOT_A_JWT = Refusal(401, "the bearer token is not a JWT")


@pytest.mark.parametrize(
    ("header", "refusal"),
    [
        (None, SIGN_IN),
        ("", SIGN_IN),
        ("Bearer", SIGN_IN),
        ("Bearer ", SIGN_IN),
        ("Basic dXNlcjpwYXNz", SIGN_IN),
        ("Basic a.b.c", SIGN_IN),  # a JWT's shape under another scheme
        ("00000000-0000-4000-8000-00000000beef", SIGN_IN),  # what X-MS-CLIENT-PRINCIPAL-ID holds
        ("Bearer not-a-jwt", NOT_A_JWT),
        ("Bearer a.b.c.d", NOT_A_JWT),
        ("Bearer " + "a" * 16_381 + ".b.c", NOT_A_JWT),  # one character over the cap
    ],
)
def test_anything_but_a_bearer_jwt_is_refused_before_any_key_is_read(header, refusal):
    assert bearer(header) == refusal


def test_a_token_at_the_size_cap_and_extra_spaces_are_still_read():
    at_cap = "a" * 16_380 + ".b.c"
    assert bearer("Bearer " + at_cap) == at_cap
    assert bearer("Bearer   x.y.z ") == "x.y.z"


def test_the_scheme_is_case_insensitive_as_http_says():
    value = token()
    assert bearer(f"bearer {value}") == value


# --- The gate: metadata and keys fetched once, refreshed when Entra rolls its keys --------
class Directory:
    """What the tenant publishes, as plain JSON, with a count of reads."""

    def __init__(self, *keys: tuple[str, object]) -> None:
        self.keys = list(keys)
        self.reads: list[str] = []
        self.down = False

    def fetch(self, url: str):
        self.reads.append(url)
        if self.down:
            raise OSError("login endpoint unreachable")
        if url.endswith("/.well-known/openid-configuration"):
            return {"issuer": ISSUER, "jwks_uri": "https://login.example/keys"}
        jwks = []
        for kid, key in self.keys:
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            jwks.append(jwk | {"kid": kid, "use": "sig"})
        return {"keys": jwks}


class Clock:
    def __init__(self) -> None:
        self.now = float(NOW)

    def __call__(self) -> float:
        return self.now


def gate(directory: Directory, clock: Clock) -> SignIn:
    return SignIn(
        "https://login.microsoftonline.com/",
        TENANT_ID,
        CLIENT,
        {"Remediation.Read"},
        directory.fetch,
        clock=clock,
    )


def test_the_gate_reads_the_tenants_metadata_and_keys_once():
    directory, clock = Directory(("k1", KEY)), Clock()
    pages = gate(directory, clock)
    for _ in range(3):
        assert pages.check(f"Bearer {token()}") is None
    assert directory.reads == [
        f"https://login.microsoftonline.com/{TENANT_ID}/v2.0/.well-known/openid-configuration",
        "https://login.example/keys",
    ]


def test_a_rolled_key_is_fetched_at_most_once_per_floor():
    directory, clock = Directory(("k1", KEY)), Clock()
    pages = gate(directory, clock)
    assert pages.check(f"Bearer {token()}") is None
    directory.keys.append(("k2", OTHER_KEY))
    rolled = token(key=OTHER_KEY, kid="k2")
    assert pages.check(f"Bearer {rolled}").status == 401  # within the floor: no refetch
    assert len(directory.reads) == 2
    clock.now += REFRESH_FLOOR_SECONDS + 1
    assert pages.check(f"Bearer {rolled}") is None
    assert len(directory.reads) == 4


def test_stale_keys_are_read_again_and_an_outage_then_answers_503():
    directory, clock = Directory(("k1", KEY)), Clock()
    pages = gate(directory, clock)
    assert pages.check(f"Bearer {token()}") is None
    directory.down = True
    clock.now += REFRESH_FLOOR_SECONDS + 1
    # Keys still fresh: an unknown kid cannot refresh, the known one still passes.
    assert pages.check(f"Bearer {token(kid='k9')}").status == 401
    assert pages.check(f"Bearer {token(exp=int(clock.now) + 60)}") is None
    clock.now += KEYS_TTL_SECONDS
    assert pages.check(f"Bearer {token(exp=int(clock.now) + 60)}") == Refusal(
        503, "cannot read the tenant's signing keys now: try again shortly"
    )


def test_no_keys_at_first_is_503_not_a_pass():
    directory, clock = Directory(("k1", KEY)), Clock()
    directory.down = True
    assert gate(directory, clock).check(f"Bearer {token()}").status == 503


def test_after_the_floor_a_known_key_reads_nothing_again():
    directory, clock = Directory(("k1", KEY)), Clock()
    pages = gate(directory, clock)
    assert pages.check(f"Bearer {token()}") is None
    clock.now += REFRESH_FLOOR_SECONDS + 1
    assert pages.check(f"Bearer {token(exp=int(clock.now) + 60)}") is None
    assert len(directory.reads) == 2


def test_the_floor_and_the_day_are_measured_from_the_last_read_exactly():
    directory, clock = Directory(("k1", KEY)), Clock()
    pages = gate(directory, clock)
    assert pages.check(f"Bearer {token()}") is None
    directory.keys.append(("k2", OTHER_KEY))
    clock.now += REFRESH_FLOOR_SECONDS  # not past the floor yet: no read
    rolled = token(key=OTHER_KEY, kid="k2", exp=int(clock.now) + 60)
    assert pages.check(f"Bearer {rolled}").status == 401
    directory.down = True
    clock.now = NOW + KEYS_TTL_SECONDS  # a day old, not older: the keys still serve
    assert pages.check(f"Bearer {token(exp=int(clock.now) + 60)}") is None


def test_the_gate_takes_the_issuer_from_the_tenants_metadata():
    directory, clock = Directory(("k1", KEY)), Clock()
    foreign = token(iss=f"https://login.microsoftonline.com/{OTHER_TENANT}/v2.0")
    assert gate(directory, clock).check(f"Bearer {foreign}") == Refusal(401, NOT_THIS_TENANT)


def test_a_failed_read_waits_before_the_next_try_and_does_not_renew_stale_keys():
    directory, clock = Directory(("k1", KEY)), Clock()
    pages = gate(directory, clock)
    assert pages.check(f"Bearer {token()}") is None
    directory.down = True
    clock.now += KEYS_TTL_SECONDS + 1  # stale: a read is due, and fails
    fresh = token(exp=int(clock.now) + 600)
    assert pages.check(f"Bearer {fresh}").status == 503
    reads = len(directory.reads)
    clock.now += RETRY_SECONDS - 1  # too soon to try again: no read, still 503
    assert pages.check(f"Bearer {fresh}").status == 503
    assert len(directory.reads) == reads
    clock.now += 1
    directory.down = False
    assert pages.check(f"Bearer {fresh}") is None  # tried again, and read
    directory.down = True
    clock.now += KEYS_TTL_SECONDS  # a day after the successful read, not the failed one
    assert pages.check(f"Bearer {token(exp=int(clock.now) + 60)}") is None
