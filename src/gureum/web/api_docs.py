"""The REST API's browsable reference at ``/v1/docs``, served from this server alone.

FastAPI's default page loads Swagger UI from a CDN and starts it with an inline script: on
the dashboard's origin, a compromised CDN file would act with a signed-in member's session,
and offline the page is blank. Here Swagger UI is vendored (``static/vendor/swagger-ui``,
swagger-ui-dist 5, Apache-2.0, which reads the OpenAPI 3.1 schema FastAPI writes), the
start-up script is our own file, and the page carries the dashboard's Content-Security-Policy
(no inline script, nothing from another origin).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from gureum.web.security import secure

VENDOR = "/static/vendor/swagger-ui"
PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>gureum REST API</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{VENDOR}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui" data-spec="/v1/openapi.json"></div>
<script src="{VENDOR}/swagger-ui-bundle.js"></script>
<script src="/static/api-docs.js"></script>
</body>
</html>
"""

router = APIRouter(include_in_schema=False)


@router.get("/v1/docs")
def api_docs() -> Response:
    # Public, as the schema is: it shows the API's shape, never data.
    return secure(HTMLResponse(PAGE), cache="no-cache")
