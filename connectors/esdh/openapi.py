"""OpenAPI 3.1 description of the ESDH connector's HTTP API, served at /openapi.json.

Written by hand, next to the handlers it describes, because it is a contract with
case-system integrators; tests/integration/test_esdh.py keeps it in step with the
routes the connector really serves and runs schemathesis against it.
"""

from __future__ import annotations

from typing import Any

_ERROR = {
    "type": "object",
    "required": ["reasonCode", "message", "hint"],
    "properties": {
        "reasonCode": {"type": "string", "description": "stable UPPER_SNAKE code"},
        "message": {"type": "string", "description": "what was wrong"},
        "hint": {"type": "string", "description": "how to fix it"},
        "violations": {
            "type": "array",
            "description": "every MeMo rule the message broke",
            "items": {
                "type": "object",
                "required": ["code", "path", "message", "hint"],
                "properties": {
                    "code": {"type": "string"},
                    "path": {"type": "string"},
                    "message": {"type": "string"},
                    "hint": {"type": "string"},
                },
            },
        },
    },
}

_RECEIPT = {
    "type": "object",
    "required": ["messageUUID", "status"],
    "properties": {
        "messageUUID": {"type": "string", "format": "uuid"},
        "status": {"type": "string", "enum": ["SUBMITTED", "DUPLICATE"]},
        "submittedAt": {"type": "string", "format": "date-time"},
        "kafka": {
            "type": "object",
            "properties": {
                "topic": {"type": "string"},
                "partition": {"type": "integer"},
                "offset": {"type": "integer"},
            },
        },
        "traceparent": {"type": "string"},
        "receipt": {
            "type": ["object", "null"],
            "description": "the technical receipt of the first submission",
        },
    },
}

_BUSINESS_RECEIPT = {
    "type": "object",
    "description": "A lifecycle event of a message this authority sent; also the body "
    "POSTed to the ESDH's receipts_url.",
    "required": ["messageUUID", "eventId", "state", "occurredAt"],
    "properties": {
        "messageUUID": {"type": "string"},
        "eventId": {"type": "string"},
        "state": {"type": "string"},
        "occurredAt": {"type": "string", "format": "date-time"},
        "reasonCode": {"type": ["string", "null"]},
        "reasonText": {"type": ["string", "null"]},
        "channel": {"type": ["string", "null"]},
        "caseID": {"type": ["string", "null"]},
        "deliveredToEsdh": {"type": "boolean"},
    },
}

_JOURNAL_ENTRY = {
    "type": "object",
    "required": ["messageUUID", "status", "attempts", "receivedAt"],
    "properties": {
        "messageUUID": {"type": "string"},
        "caseID": {"type": ["string", "null"]},
        "caseSystem": {"type": ["string", "null"]},
        "replyTo": {"type": ["string", "null"]},
        "receivedAt": {"type": "string"},
        "attempts": {"type": "integer"},
        "lastError": {"type": ["string", "null"]},
        "journaledAt": {"type": ["string", "null"]},
        "status": {"type": "string", "enum": ["pending", "journaled"]},
    },
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json({"$ref": "#/components/schemas/Error"}, description)


_SECURED = ("/memo", "/messages/{message_uuid}", "/journal")


def openapi_document() -> dict[str, Any]:
    """The API description (a fresh dict each call)."""
    document = _document()
    for path in _SECURED:  # the authority's access token (connectors.authorities)
        for operation in document["paths"][path].values():
            operation["security"] = [{"authorityToken": []}]
            operation["responses"]["401"] = _error("no, a damaged or an expired access token")
            operation["responses"]["403"] = _error("the token is another authority's")
    return document


def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "DP2 ESDH connector",
            "version": "1.0.0",
            "description": "Submit MeMo 1.1/1.2 messages from a case system (ESDH) to DP2 "
            "and follow them. Business receipts and journaled post are pushed to the ESDH "
            "(receipts_url, journal_url); see docs/connectors.md.",
        },
        "paths": {
            "/memo": {
                "post": {
                    "operationId": "submitMemo",
                    "summary": "Submit one MeMo message; the answer is its technical receipt",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/xml": {
                                "schema": {"type": "string", "description": "MeMo XML"}
                            }
                        },
                    },
                    "responses": {
                        "202": _json(_RECEIPT, "submitted: durably on the backbone"),
                        "200": _json(_RECEIPT, "a resend of a message already submitted"),
                        "409": _error("the messageUUID was used for another message"),
                        "413": {"description": "larger than MeMo allows"},
                        "415": _error("the body is not declared as XML"),
                        "422": _error("the message breaks MeMo's rules (every violation)"),
                        "503": _error("the backbone is unavailable; resend unchanged"),
                    },
                }
            },
            "/messages/{message_uuid}": {
                "get": {
                    "operationId": "getMessage",
                    "summary": "A sent message's receipt and its business receipts so far",
                    "parameters": [
                        {
                            "name": "message_uuid",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["messageUUID", "status", "businessReceipts"],
                                "properties": {
                                    "messageUUID": {"type": "string"},
                                    "caseID": {"type": ["string", "null"]},
                                    "caseSystem": {"type": ["string", "null"]},
                                    "status": {"type": "string"},
                                    "receipt": {"type": ["object", "null"]},
                                    "createdAt": {"type": "string"},
                                    "businessReceipts": {
                                        "type": "array",
                                        "items": _BUSINESS_RECEIPT,
                                    },
                                },
                            },
                            "the message",
                        ),
                        "404": _error("this connector sent no message with that UUID"),
                    },
                }
            },
            "/journal": {
                "get": {
                    "operationId": "listJournal",
                    "summary": "Received post and whether the ESDH has journaled it",
                    "parameters": [
                        {
                            "name": "status",
                            "in": "query",
                            "required": False,
                            "schema": {
                                "type": "string",
                                "enum": ["pending", "journaled", "all"],
                                "default": "pending",
                            },
                        }
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["entries"],
                                "properties": {
                                    "entries": {"type": "array", "items": _JOURNAL_ENTRY}
                                },
                            },
                            "journal entries (no content)",
                        ),
                        "400": _error("unknown status"),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "getOpenApi",
                    "summary": "This description",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "getHealth",
                    "summary": "ok, degraded (receipts or journal entries wait) or failing",
                    "responses": {
                        "200": _json({"type": "object"}, "ok or degraded"),
                        "503": _json({"type": "object"}, "failing"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "getMetrics",
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "schemas": {"Error": _ERROR},
            "securitySchemes": {
                "authorityToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "dp2 tokens authority --cvr CVR; SF1601's "
                    "'Holder-of-key <token>' form is accepted too",
                }
            },
        },
    }
