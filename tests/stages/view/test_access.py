"""Units of the view's access rules (stages/view/access.py) and connection caps (stages/view/guard.py)."""
from stages.view.access import Sessions, host_allowed, offered_tokens, token_matches
from stages.view.guard import ConnectionGuard
from stages.view.hub import ViewStats

NOW = 1_800_000_000.0


def test_a_session_cookie_is_valid_until_it_expires_and_never_holds_the_token():
    sessions = Sessions("s3cret-token", hours=2)
    cookie = sessions.issue(now=NOW)
    assert "s3cret" not in cookie
    assert sessions.valid(cookie, now=NOW + 7199)
    assert not sessions.valid(cookie, now=NOW + 7201)


def test_a_cookie_of_another_token_or_a_changed_expiry_is_refused():
    cookie = Sessions("old-token", hours=2).issue(now=NOW)
    assert not Sessions("new-token", hours=2).valid(cookie, now=NOW)
    expiry, signature = cookie.split(".")
    assert not Sessions("old-token", hours=2).valid(f"{int(expiry) + 10**6}.{signature}", now=NOW)
    for junk in (None, "", ".", "1.", "abc.def", "9" * 40 + "." + "0" * 64, "1." + "z" * 64):
        assert not Sessions("old-token", hours=2).valid(junk, now=NOW)


def test_a_session_survives_a_restart_of_the_view():
    assert Sessions("t", hours=1).valid(Sessions("t", hours=1).issue(now=NOW), now=NOW + 1)


def test_tokens_are_taken_from_query_header_or_bearer_only():
    offered = offered_tokens({"token": "a"}, {"X-View-Token": "b", "Authorization": "Bearer c"})
    assert offered == ["a", "b", "c"] and token_matches(offered, "c") and not token_matches(offered, "d")
    assert offered_tokens({}, {"Authorization": "Basic c"}) == []


def test_without_a_token_only_loopback_or_the_configured_host_names_are_served():
    assert host_allowed("127.0.0.1:8080", "127.0.0.1") and host_allowed("localhost:1", "127.0.0.1")
    assert host_allowed("[::1]:8080", "::1") and host_allowed("cam-view.lan:80", "cam-view.lan")
    assert not host_allowed("evil.example:8080", "127.0.0.1") and not host_allowed("", "127.0.0.1")


def test_the_guard_caps_per_address_and_in_all_and_frees_on_release():
    guard = ConnectionGuard(max_total=3, max_per_client=2, header_timeout_s=1, stats=ViewStats())
    assert guard.admit("a") is None and guard.admit("a") is None
    assert guard.admit("a") == "too many connections from your address"
    assert guard.admit("b") is None and guard.admit("c") == "too many connections"
    guard.release("a")
    assert guard.admit("c") is None and guard.total == 3 and guard.per_client == {"a": 1, "b": 1, "c": 1}
    assert guard.stats.counts["connections"] == 3
