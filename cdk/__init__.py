"""The TradePulse AWS deployment: one construct class per concern, composed by `stack.TradePulseStack`.

`app.py` at the repository root builds the app with `build_app()`; tests call the same function.
"""
