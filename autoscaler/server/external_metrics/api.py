"""The API's wire format: group and version, and metav1.Status error bodies.
"""

from __future__ import annotations

from aiohttp import web

GROUP = "external.metrics.k8s.io"
VERSION = "v1beta1"
GROUP_VERSION = f"{GROUP}/{VERSION}"


def status(code: int, reason: str, message: str) -> web.Response:
    """A metav1.Status body, which kubectl and client-go print as the error message."""
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.json_response(body, status=code)


