"""Tenants and their keys (worker/gateway/tenants.py): the keys file is checked once, at start-up."""

import hashlib

import pytest

from worker.gateway.tenants import KeyTable, tenant_of


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def test_each_listed_key_is_a_tenant_and_a_files_tenant_has_all_its_keys(tmp_path):
    (tmp_path / "keys.toml").write_text(f'[tenants.team-a]\nkey_sha256 = ["{digest("a1")}", "{digest("a2")}"]\n')
    table = KeyTable.build(frozenset({"solo"}), tmp_path / "keys.toml")
    assert table.tenant(b"a1") == table.tenant(b"a2") == "team-a"
    assert table.tenant(b"solo") == tenant_of(b"solo") and "solo" not in tenant_of(b"solo")
    assert table.tenant(b"a3") is None and table.tenant(b"") is None
    assert not KeyTable.build(frozenset(), None)  # no keys: an open gateway


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("[tenants.a]\nkey_sha256 = ['abc']\n", "key_sha256"),  # not a SHA-256 digest
        ("[tenants.a]\nkey_sha256 = []\n", "key_sha256"),  # a tenant without keys
        (f"[tenants.a]\nkey_sha256 = ['{digest('k')}']\nlane = 'fast'\n", "lane"),  # not a lane
        (f"[tenants.a]\nkey_sha256 = ['{digest('k')}']\naudio_seconds_per_day = 0\n", "audio_seconds_per_day"),
        (f"[tenants.a]\nkey_sha256 = ['{digest('k')}']\nallowed_models = []\n", "allowed_models"),
        (f"[tenants.a]\nkey_sha256 = ['{digest('k')}']\nrequests_per_minute = 0\n", "requests_per_minute"),
        (f"[tenants.'a b']\nkey_sha256 = ['{digest('k')}']\n", "tenants"),  # not a name
        (f"[tenants.a]\nkey_sha256 = ['{digest('k')}']\n[tenants.b]\nkey_sha256 = ['{digest('k')}']\n", "twice"),
        ("[tenants.a\n", "not TOML"),
    ],
)
def test_a_keys_file_that_breaks_the_format_stops_the_start_up(tmp_path, text, why):
    (tmp_path / "keys.toml").write_text(text)
    with pytest.raises(ValueError, match=why):
        KeyTable.build(frozenset(), tmp_path / "keys.toml")
    with pytest.raises(ValueError, match="No such file"):
        KeyTable.build(frozenset(), tmp_path / "missing.toml")
