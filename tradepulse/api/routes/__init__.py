"""The API's routers, one per OpenAPI tag; `tradepulse.api.app.create_app` includes them in this order."""
