"""The network settings of a shop, from the environment."""

from __future__ import annotations

import pytest

from microfactory.config import ConfigError, load_settings


def test_hubs_are_a_comma_separated_list_of_base_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "MICROFACTORY_NETWORK_HUBS", "http://127.0.0.1:8100/, https://hub.example.org"
    )
    monkeypatch.setenv("MICROFACTORY_NETWORK_PUBLISH", "true")
    settings = load_settings()
    assert settings.network_hubs == ["http://127.0.0.1:8100", "https://hub.example.org"]
    assert settings.network_publish is True
    assert settings.network_report_ttl_s == 900
    monkeypatch.setenv("MICROFACTORY_NETWORK_HUBS", "")
    assert load_settings().network_hubs == []


def test_a_hub_that_is_not_an_http_url_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROFACTORY_NETWORK_HUBS", "hub.example.org")
    with pytest.raises(ConfigError, match=r"network_hubs: 'hub\.example\.org' is not an http"):
        load_settings()
    monkeypatch.setenv("MICROFACTORY_NETWORK_HUBS", "")
    monkeypatch.setenv("MICROFACTORY_NETWORK_REPORT_TTL_S", "10")
    with pytest.raises(ConfigError, match="network_report_ttl_s"):
        load_settings()
