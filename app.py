"""CDK entry point (`npx cdk synth`, `npx cdk deploy`): see docs/deployment.md."""

import os

# jsii prints a banner on every start on Node majors it no longer supports; synth works on them (Node 20
# is Debian 12's), so keep the output readable.
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "18,20")

from cdk.app import build_app

build_app().synth()
