"""Settings: every variable is documented in .env.example, and secrets never show in output."""

from __future__ import annotations

import re

from tests.paths import REPO_ROOT
from tradepulse.config import Settings


def _documented_variables() -> set[str]:
    text = (REPO_ROOT / ".env.example").read_text()
    return set(re.findall(r"^([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))


def test_every_setting_is_documented_in_env_example() -> None:
    documented = _documented_variables()
    missing = []
    for name, field in Settings.model_fields.items():
        aliases = getattr(field.validation_alias, "choices", None) or [f"TRADEPULSE_{name.upper()}"]
        if not documented.intersection(aliases):
            missing.append(name)
    assert not missing, f"settings missing from .env.example: {missing}"


def test_env_example_names_only_real_settings() -> None:
    known = {f"TRADEPULSE_{name.upper()}" for name in Settings.model_fields}
    for field in Settings.model_fields.values():
        known.update(getattr(field.validation_alias, "choices", None) or [])
    assert _documented_variables() <= known


def test_secrets_are_masked(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MASSIVE_API_KEY", "sk-live-very-secret")
    monkeypatch.setenv("FINNHUB_API_KEY", "fh-very-secret")
    settings = Settings(_env_file=None)
    assert settings.massive_api_key is not None
    assert settings.massive_api_key.get_secret_value() == "sk-live-very-secret"
    for rendering in (str(settings), repr(settings), settings.model_dump_json()):
        assert "very-secret" not in rendering
    assert not settings.use_simulator


def test_polygon_key_is_accepted_as_alias(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("MASSIVE_API_KEY", raising=False)
    monkeypatch.setenv("POLYGON_API_KEY", "pk")
    assert Settings(_env_file=None).massive_api_key is not None


def test_default_rebuild_lookback_covers_the_feature_state() -> None:
    """A restarted runner replays `rebuild_lookback_s` of input; the features are only reproduced
    exactly if that covers the windows plus the volume z-score's size-cap window (and the grace)."""
    from tradepulse.core.features import FeatureConfig

    settings = Settings(_env_file=None)
    assert settings.rebuild_lookback_s * 1000 >= FeatureConfig.from_settings(settings).rebuild_ms
