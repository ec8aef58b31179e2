"""Build the CDK app: the stack of the selected environment, checked by cdk-nag (AwsSolutions)."""

from __future__ import annotations

import os
from typing import Any

from aws_cdk import App, Environment, Validations
from cdk_nag import AwsSolutionsChecks

from cdk.config import load_config
from cdk.nag import acknowledge_findings
from cdk.stack import TradePulseStack


def build_app(outdir: str | None = None, context: dict[str, Any] | None = None) -> App:
    """The app with one TradePulse stack (environment from the `env` context, default dev).

    Account/region come from `-c account=… -c region=…` or the CLI's CDK_DEFAULT_*; without them the
    stack is environment-agnostic, so synth needs no credentials.
    """
    app = App(outdir=outdir, context=context)
    config = load_config(app.node.try_get_context)
    account = app.node.try_get_context("account") or os.environ.get("CDK_DEFAULT_ACCOUNT")
    region = app.node.try_get_context("region") or os.environ.get("CDK_DEFAULT_REGION")
    env = Environment(account=account, region=region) if account and region else None
    stack = TradePulseStack(app, config.stack_name, config=config, env=env)
    acknowledge_findings(stack)
    # Acknowledgements are also written into the template metadata (cdk_nag.rules_to_suppress): an audit
    # trail that tests check for reasons.
    Validations.of(app).add_plugins(AwsSolutionsChecks(app, write_suppressions_to_cloud_formation=True))
    return app
