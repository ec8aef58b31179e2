"""The TradePulse AWS deployment: one construct class per concern, composed by `stack.TradePulseStack`.

`app.py` at the repository root builds the app with `build_app()`; tests call the same function.
"""

import os

# jsii prints an end-of-life banner on every start on Node majors it no longer supports; synth works on
# them (Node 20 is Debian 12's). Set here too so `python -m cdk.schema_registry` stays quiet.
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "18,20")
