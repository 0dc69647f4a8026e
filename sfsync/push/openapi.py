"""The OpenAPI 3 description of `sfsync serve`, served at ``/openapi.json``.

For integrators (what to send, how to authenticate, what each answer means) and for the HTTP
fuzzer in the tests. It is built from the running server's settings (push path, secret header,
configured authentication, body limit), so it always describes the server that serves it.
"""

from __future__ import annotations

from typing import Any

from sfsync.push.auth import CIPHER_HEADER, DIGEST_HEADER, KEY_ID_HEADER, SIGNATURE_HEADER, PushAuth

OPENAPI_VERSION = "3.0.3"

_VISIBLE = "^[!-#%-~][!-~]*$"  # ids: visible ASCII, not a template variable ($drId); MessageMedia sends UUIDs
_TIMESTAMP = {"type": "string", "format": "date-time", "example": "2026-11-20T09:00:01.551Z"}

# A delivery report as MessageMedia pushes it (callback_url) or as sfsync's webhook template renders
# it: the fields of the "Delivery Reports" section of MessageMedia's API description.
DELIVERY_REPORT: dict[str, Any] = {
    "type": "object",
    "required": ["delivery_report_id", "message_id", "status"],
    "properties": {
        "delivery_report_id": {"type": "string", "minLength": 1, "maxLength": 100, "pattern": _VISIBLE,
                               "example": "693e87f2-a553-4281-9ffe-ddf04cbc4bf3",
                               "description": "Unique per report: a second push of it is stored once"},
        "message_id": {"type": "string", "minLength": 1, "maxLength": 100, "pattern": _VISIBLE,
                       "example": "389dc1a8-62a4-4110-ba61-af94806c006f"},
        "status": {"type": "string", "minLength": 1, "maxLength": 40, "pattern": "^[A-Za-z_]+$",
                   "example": "delivered",
                   "description": "enroute, submitted, delivered, expired, rejected, failed (any case)"},
        "error_code": {"type": "string", "maxLength": 20, "pattern": "^[0-9A-Za-z]*$", "example": "220",
                       "description": "The numeric delivery status code"},
        "submitted_date": _TIMESTAMP,
        "date_received": _TIMESTAMP,
        "source_number": {"type": "string"},
        "callback_url": {"type": "string"},
        "original_text": {"type": "string"},
        "delay": {"type": "integer"},
        "billing_units": {"type": "integer"},
        "vendor_account_id": {"type": "object", "properties": {"vendor_id": {"type": "string"},
                                                               "account_id": {"type": "string"}}},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"},
                     "description": "The message's metadata (the Task Id key among it)"},
    },
}


def _error(description: str, **properties: Any) -> dict[str, Any]:
    schema = {"type": "object", "required": ["error"],
              "properties": {"error": {"type": "string"}, **properties}}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _retry_after() -> dict[str, Any]:
    return {"Retry-After": {"description": "Seconds to wait before trying again", "schema": {"type": "integer"}}}


def _security(auth: PushAuth) -> tuple[dict[str, Any], list[dict[str, list[str]]]]:
    schemes: dict[str, Any] = {}
    if "secret" in auth.methods:
        schemes["sharedSecret"] = {
            "type": "apiKey", "in": "header", "name": auth.secret_header,
            "description": "The shared secret (SFSYNC_PUSH_SECRET), sent as a static webhook header"}
    if "signature" in auth.methods:
        schemes["messageMediaSignature"] = {
            "type": "apiKey", "in": "header", "name": SIGNATURE_HEADER,
            "description": (f"MessageMedia's signed callbacks: base64 RSA PKCS#1 v1.5 signature over the request "
                            f"line, the Date header and the body, with {DIGEST_HEADER}, {CIPHER_HEADER} (RSA), "
                            f"{KEY_ID_HEADER} and a Date within {auth.max_skew_seconds:g} s of the server's clock")}
    names = list(schemes)
    if auth.mode == "all" or len(names) == 1:
        return schemes, [{name: [] for name in names}]
    return schemes, [{name: []} for name in names]


def openapi_document(*, push_path: str, health_path: str, openapi_path: str, auth: PushAuth, max_body: int,
                     max_depth: int, metrics_path: str | None = None) -> dict[str, Any]:
    schemes, security = _security(auth)
    push_body = {
        "oneOf": [
            {"$ref": "#/components/schemas/DeliveryReport"},
            {"type": "object", "required": ["delivery_reports"], "properties": {
                "delivery_reports": {"type": "array", "minItems": 1,
                                     "items": {"$ref": "#/components/schemas/DeliveryReport"}}}},
        ],
    }
    stored = {"type": "object", "required": ["stored", "duplicates"],
              "properties": {"stored": {"type": "integer", "minimum": 0},
                             "duplicates": {"type": "integer", "minimum": 0}}}
    health = {"type": "object", "required": ["status"], "properties": {
        "status": {"type": "string", "enum": ["ok", "stopping", "unavailable"]}, "reason": {"type": "string"},
        "inbox_pending": {"type": "integer"}, "drain": {"type": "object"},
        "pushes": {"type": "object", "additionalProperties": {"type": "integer"}}}}
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "sfsync push receiver",
            "version": "1",
            "description": ("Receives the delivery reports MessageMedia pushes (per-message callback_url or an "
                            "account webhook). A push is answered 2xx only once its reports are committed to "
                            "the local store; any other answer means nothing was stored and it should be pushed "
                            f"again. Bodies: JSON, at most {max_body} bytes, nested at most {max_depth} levels."),
        },
        "paths": {
            push_path: {"post": {
                "operationId": "pushDeliveryReports",
                "summary": "Store pushed delivery reports",
                "security": security,
                "requestBody": {"required": True, "content": {"application/json": {"schema": push_body}}},
                "responses": {
                    "200": {"description": "Stored (committed); a report already stored counts as a duplicate",
                            "content": {"application/json": {"schema": stored}}},
                    "400": _error("Malformed: not JSON, too deeply nested, or not delivery reports; nothing stored",
                                  reason={"type": "string"}),
                    "401": _error("Not authenticated; nothing stored", reason={"type": "string"}),
                    "408": _error("The request did not arrive in time; nothing stored",
                                  limit_seconds={"type": "number"}),
                    "411": _error("Content-Length required (chunked bodies are not accepted)"),
                    "413": _error("Body too large; nothing stored", limit_bytes={"type": "integer"}),
                    "415": _error("Content-Type is not JSON; nothing stored", accepted={"type": "string"}),
                    "429": {**_error("Too many connections from this address", limit={"type": "integer"}),
                            "headers": _retry_after()},
                    "503": {**_error("The store cannot be written, or the server is stopping; push again",
                                     reason={"type": "string"}),
                            "headers": _retry_after()},
                },
            }},
            health_path: {"get": {
                "operationId": "health",
                "summary": "Health: the store, pending reports, push counts, the drain",
                "security": [],
                "responses": {
                    "200": {"description": "Healthy", "content": {"application/json": {"schema": health}}},
                    "503": {"description": "Unavailable (store unreadable) or stopping",
                            "content": {"application/json": {"schema": health}}},
                },
            }},
            openapi_path: {"get": {
                "operationId": "openapi",
                "summary": "This description",
                "security": [],
                "responses": {"200": {"description": "OpenAPI 3 document",
                                      "content": {"application/json": {"schema": {"type": "object"}}}}},
            }},
        },
        "components": {"schemas": {"DeliveryReport": DELIVERY_REPORT}, "securitySchemes": schemes},
    }
    if metrics_path:
        document["paths"][metrics_path] = {"get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics: drain runs, counters, the backlog, build info",
            "security": [],
            "responses": {"200": {"description": "Prometheus text exposition format 0.0.4",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }}
    return document
