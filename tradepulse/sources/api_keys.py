"""Provider API keys that may not be set yet: wait for them instead of failing the deployment.

The stack creates the provider-keys secret with placeholders (`PLACEHOLDER`), because CloudFormation
cannot know the keys; the operator puts the real ones with `aws secretsmanager put-secret-value` after
the first deploy. ECS injects secrets into the environment only when a task starts, so a service that
started with a placeholder would never see the real key - and one that exited on the provider's
`auth_failed` would make the ECS deployment circuit breaker roll the whole stack back. So ingest and
news, given a placeholder, stay up and re-read the secret themselves (`TRADEPULSE_API_KEYS_SECRET_ID`)
with backoff, logging "waiting for API key", and start once a real key is there.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from pydantic import SecretStr

from tradepulse.config import Settings
from tradepulse.errors import SourceError

log = logging.getLogger(__name__)

#: The value the stack puts in the secret at creation (cdk/services.py).
PLACEHOLDER = "set-me"
#: Secret JSON key → Settings field.
FIELDS = {"MASSIVE_API_KEY": "massive_api_key", "FINNHUB_API_KEY": "finnhub_api_key"}


class PlaceholderKeyError(SourceError):
    """A key is a placeholder and there is no secret to re-read it from."""


def is_placeholder(key: SecretStr | None) -> bool:
    """True for a key that is set but not a real one (empty, or the stack's placeholder)."""
    return key is not None and key.get_secret_value().strip() in ("", PLACEHOLDER)


def read_secret_key(secret_id: str, name: str, region: str) -> SecretStr | None:
    """`name` from the JSON secret `secret_id` (None if absent)."""
    import boto3

    client = boto3.client("secretsmanager", region_name=region)
    value = json.loads(client.get_secret_value(SecretId=secret_id)["SecretString"]).get(name)
    return SecretStr(value) if isinstance(value, str) else None


def wait_for_api_key(
    settings: Settings,
    name: str,
    *,
    sleep: Callable[[float], None] = time.sleep,
    read: Callable[[str, str, str], SecretStr | None] = read_secret_key,
) -> Settings:
    """`settings` with a real `name` key (MASSIVE_API_KEY or FINNHUB_API_KEY).

    A missing key is left missing (the simulator, or no news). A placeholder is re-read from the secret
    `settings.api_keys_secret_id` every `api_key_wait_initial_s` seconds, doubling up to
    `api_key_wait_max_s`, until it is real; failures to read the secret are logged and retried too.
    Without a secret id a placeholder raises `PlaceholderKeyError`. The key itself is never logged."""
    field = FIELDS[name]
    key: SecretStr | None = getattr(settings, field)
    if not is_placeholder(key):
        return settings
    secret_id = settings.api_keys_secret_id
    if not secret_id:
        raise PlaceholderKeyError(f"{name} is the placeholder {PLACEHOLDER!r}: set the real key")
    delay = settings.api_key_wait_initial_s
    while is_placeholder(key) or key is None:
        log.warning(
            "waiting for API key: %s in secret %s is not set yet (put it with `aws secretsmanager "
            "put-secret-value`); checking again in %.0f s",
            name,
            secret_id,
            delay,
        )
        sleep(delay)
        delay = min(delay * 2, settings.api_key_wait_max_s)
        try:
            key = read(secret_id, name, settings.aws_region)
        except Exception as exc:  # a transient AWS error must not end the wait
            log.warning("reading secret %s failed: %s", secret_id, type(exc).__name__)
    log.info("%s is set; starting", name)
    return settings.model_copy(update={field: key})
