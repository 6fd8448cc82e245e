"""OpenAPI 3.1 descriptions of the citizen-facing APIs (forms, mailbox apps).

Written by hand as contracts with form and app vendors, served at /openapi.json by
each connector; tests/integration/test_citizens.py keeps them in step with the
routes served and runs schemathesis against them.
"""

from __future__ import annotations

from typing import Any

_ERROR = {
    "type": "object",
    "required": ["reasonCode", "message", "hint"],
    "properties": {
        "reasonCode": {"type": "string"},
        "message": {"type": "string"},
        "hint": {"type": "string"},
        "violations": {"type": "array", "items": {"type": "object"}},
    },
}
_BEARER: list[dict[str, list[str]]] = [{"citizenToken": []}]
_SECURITY = {
    "citizenToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "A citizen's token (development: dp2 tokens issue --cpr ...)",
    }
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json({"$ref": "#/components/schemas/Error"}, description)


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _openapi_json() -> dict[str, Any]:
    return {
        "get": {
            "operationId": "getOpenApi",
            "responses": {"200": _json({"type": "object"}, "this description")},
        }
    }


def _service_paths() -> dict[str, Any]:
    return {
        "/openapi.json": _openapi_json(),
        "/healthz": {
            "get": {
                "operationId": "getHealth",
                "responses": {
                    "200": _json({"type": "object"}, "ok"),
                    "503": _json({"type": "object"}, "failing"),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "getMetrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }


_SUBMISSION = {
    "type": "object",
    "required": ["label", "formData"],
    "properties": {
        "label": {"type": "string", "maxLength": 256},
        "text": {"type": "string"},
        "formData": {
            "type": "object",
            "required": ["taskKey", "version", "label"],
            "properties": {
                "taskKey": {"type": "string"},
                "version": {"type": "string"},
                "activityFacet": {"type": "string"},
                "label": {"type": "string"},
            },
        },
        "kle": {
            "type": "object",
            "required": ["subjectKey", "version", "label"],
            "properties": {
                "subjectKey": {"type": "string"},
                "version": {"type": "string"},
                "activityFacet": {"type": "string"},
                "label": {"type": "string"},
            },
        },
        "caseID": {"type": "string"},
        "fields": {"type": "object", "additionalProperties": {"type": "string"}},
        "attachments": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["filename", "content"],
                "properties": {
                    "filename": {"type": "string"},
                    "mimeType": {"type": "string"},
                    "content": {"type": "string", "contentEncoding": "base64"},
                },
            },
        },
    },
}


def forms_openapi() -> dict[str, Any]:
    """The self-service forms API."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "DP2 self-service forms connector",
            "version": "1.0.0",
            "description": "A citizen's form submission becomes a signed message to the "
            "authority, with FORMdata and KLE in ContentData. 10 MB per submission "
            "unless the authority allows up to 60 MB.",
        },
        "paths": {
            "/forms/{cvr}/submissions": {
                "post": {
                    "operationId": "submitForm",
                    "security": _BEARER,
                    "parameters": [_path_param("cvr")],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": _SUBMISSION},
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "required": ["submission"],
                                    "properties": {
                                        "submission": {"type": "string"},
                                        "file": {"type": "string", "format": "binary"},
                                    },
                                }
                            },
                        },
                    },
                    "responses": {
                        "202": _json(
                            {
                                "type": "object",
                                "required": ["messageUUID", "status"],
                                "properties": {
                                    "messageUUID": {"type": "string"},
                                    "status": {"type": "string"},
                                    "authority": {"type": "string"},
                                    "submittedAt": {"type": "string"},
                                },
                            },
                            "the receipt: the message is on the backbone",
                        ),
                        "400": _error("malformed JSON or multipart, or a missing field"),
                        "401": _error("no valid citizen token"),
                        "404": _error("no authority with that CVR on DP2"),
                        "413": _error("larger than the authority accepts"),
                        "415": _error("neither JSON nor multipart"),
                        "422": _error("the message would break MeMo's rules"),
                        "503": _error("the backbone is unavailable; submit again"),
                    },
                }
            },
            **_service_paths(),
        },
        "components": {"schemas": {"Error": _ERROR}, "securitySchemes": _SECURITY},
    }


def _app_operation(
    operation_id: str,
    params: list[str],
    ok: tuple[str, str],
    errors: dict[str, str],
    *,
    body: dict[str, Any] | None = None,
    query: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "security": _BEARER,
        "parameters": [_path_param(p) for p in params] + (query or []),
        "responses": {
            ok[0]: _json({"type": "object"}, ok[1]),
            "401": _error("no valid citizen token"),
            **{code: _error(text) for code, text in errors.items()},
        },
    }
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    return operation


def apps_openapi() -> dict[str, Any]:
    """The mailbox-app API."""
    unknown = {"404": "no such mailbox or message for this citizen"}
    page = [
        {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": 100},
        },
        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
    ]
    message = ["mailbox", "uuid"]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "DP2 mailbox-app connector",
            "version": "1.0.0",
            "description": "A citizen's app lists, reads and answers post; a relative with "
            "read access reads only. Mailbox ids: 'me', or one from GET /access.",
        },
        "paths": {
            "/mailboxes/{mailbox}/messages": {
                "get": _app_operation(
                    "listMessages",
                    ["mailbox"],
                    ("200", "newest first"),
                    {**unknown, "400": "bad limit or cursor"},
                    query=page,
                )
            },
            "/mailboxes/{mailbox}/messages/{uuid}": {
                "get": _app_operation("getMessage", message, ("200", "the message"), unknown)
            },
            "/mailboxes/{mailbox}/messages/{uuid}/files/{index}": {
                "get": {
                    **_app_operation(
                        "getFile",
                        [*message, "index"],
                        ("200", "the file"),
                        {**unknown, "400": "bad index"},
                    ),
                    "responses": {
                        "200": {
                            "description": "the file's bytes (a big one streamed, checked "
                            "against its SHA-256 as it is read)",
                            "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                        },
                        "400": _error("bad index"),
                        "401": _error("no valid citizen token"),
                        "404": _error("no such mailbox, message or file"),
                        "503": _error(
                            "the mailbox, or the file in its folder, is not there "
                            "or not whole (BLOB_MISSING, BLOB_CORRUPT)"
                        ),
                    },
                }
            },
            "/mailboxes/{mailbox}/messages/{uuid}/read": {
                "post": _app_operation(
                    "markRead",
                    message,
                    ("200", "marked read"),
                    {**unknown, "403": "read access cannot act"},
                )
            },
            "/mailboxes/{mailbox}/messages/{uuid}/replies": {
                "post": _app_operation(
                    "reply",
                    message,
                    ("202", "the reply is on the backbone"),
                    {
                        **unknown,
                        "400": "no text",
                        "403": "read access cannot reply",
                        "409": "replies not allowed or too late",
                        "422": "the reply would break MeMo's rules",
                        "503": "the backbone is unavailable",
                    },
                    body={
                        "type": "object",
                        "required": ["text"],
                        "properties": {"text": {"type": "string"}},
                    },
                )
            },
            "/access": {
                "get": _app_operation("listAccess", [], ("200", "granted and received"), {}),
                "post": _app_operation(
                    "grantAccess",
                    [],
                    ("201", "granted"),
                    {"400": "not a CPR number"},
                    body={
                        "type": "object",
                        "required": ["delegateCpr"],
                        "properties": {"delegateCpr": {"type": "string"}},
                    },
                ),
            },
            "/access/{delegate}": {
                "delete": _app_operation(
                    "revokeAccess", ["delegate"], ("200", "revoked"), {"404": "no such delegation"}
                )
            },
            "/audit": {
                "get": _app_operation("getAudit", [], ("200", "who accessed my mailbox"), {})
            },
            **_service_paths(),
        },
        "components": {"schemas": {"Error": _ERROR}, "securitySchemes": _SECURITY},
    }
