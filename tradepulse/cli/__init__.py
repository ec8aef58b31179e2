"""The `tradepulse` command."""
