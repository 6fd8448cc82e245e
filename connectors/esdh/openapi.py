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
        "ngdpEvent": {
            "type": ["string", "null"],
            "description": "NgDP's name for the event where one fits (MEMO_SEND_RECEIVED, "
            "MEMO_SEND_VALIDATED, MEMO_AVAILABLE_TO_RECIPIENT, MESSAGE_READ, "
            "PHYSICAL_LETTER_SENT, NOTIFICATION_SENT, NOTIFICATION_FAILED, "
            "DELAYED_MEMO_MESSAGE_RECALLED)",
        },
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


_KOMBI_RESPONSE = {
    "type": "object",
    "description": "SF1601's kombi_response (XML by default; JSON when only JSON is "
    "accepted). A refusal also carries DP2's reasonCode, message, hint and violations.",
    "required": ["Result", "HovedoplysningerSvarREST"],
    "properties": {
        "Result": {"type": "boolean"},
        "TransmissionID": {"type": "string", "description": "the messageUUID"},
        "HovedoplysningerSvarREST": {
            "type": "object",
            "properties": {
                "TransaktionsId": {"type": "string", "description": "X-TransaktionsId echoed"},
                "TransaktionsTid": {"type": "string", "format": "date-time"},
                "SvarReaktion": {
                    "type": "object",
                    "properties": {
                        "Advis": {
                            "type": "object",
                            "properties": {
                                "AdvisId": {"type": "string"},
                                "AdvisTekst": {"type": "string", "enum": ["Received"]},
                            },
                        },
                        "Fejl": {
                            "type": "object",
                            "properties": {
                                "FejlId": {"type": "string", "description": "the reason code"},
                                "FejlTekst": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
        "reasonCode": {"type": "string"},
        "message": {"type": "string"},
        "hint": {"type": "string"},
        "violations": {"type": "array", "items": {"type": "object"}},
    },
}

_TRANSACTION_HEADERS = [
    {
        "name": "X-TransaktionsId",
        "in": "header",
        "required": True,
        "description": "the caller's transaction id (1-128 of A-Z a-z 0-9 . _ : -), echoed",
        "schema": {"type": "string"},
    },
    {
        "name": "X-TransaktionsTid",
        "in": "header",
        "required": False,
        "description": "the caller's time of the request; accepted, not checked",
        "schema": {"type": "string"},
    },
]


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _kombi(description: str) -> dict[str, Any]:
    schema = {"$ref": "#/components/schemas/KombiResponse"}
    return {
        "description": description,
        "content": {"application/xml": {"schema": schema}, "application/json": {"schema": schema}},
    }


def _kombi_operation(operation_id: str, summary: str) -> dict[str, Any]:
    return {
        "post": {
            "operationId": operation_id,
            "summary": summary,
            "parameters": _TRANSACTION_HEADERS,
            "requestBody": {
                "required": True,
                "content": {
                    "application/xml": {
                        "schema": {
                            "type": "string",
                            "description": "<kombi_request><KombiValgKode>Digital Post | "
                            "NemSMS | Fysisk Post | Automatisk Valg</KombiValgKode>"
                            "<memo:Message ...>...</memo:Message></kombi_request>",
                        }
                    }
                },
            },
            "responses": {
                "200": _kombi(
                    "taken (Result true, AdvisTekst Received); a resend is answered "
                    "the same, with X-DP2-Status DUPLICATE"
                ),
                "400": _kombi(
                    "no X-TransaktionsId, or not a kombi_request with a "
                    "KombiValgKode and one memo:Message"
                ),
                "409": _kombi("the messageUUID was used for another message or channel"),
                "413": {"description": "larger than MeMo allows"},
                "415": _kombi("the body is not declared as XML"),
                "422": _kombi("a MeMo rule broken, or the channel cannot reach the recipient"),
                "503": _kombi("the backbone is unavailable; resend unchanged"),
            },
        }
    }


def _lookup_operation(operation_id: str, summary: str) -> dict[str, Any]:
    identifier = {"type": "string", "pattern": "^[0-9]+$"}
    return {
        "get": {
            "operationId": operation_id,
            "summary": summary,
            "parameters": [
                *_TRANSACTION_HEADERS,
                {"name": "cprNumber", "in": "query", "required": False, "schema": identifier},
                {"name": "cvrNumber", "in": "query", "required": False, "schema": identifier},
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["result"],
                        "properties": {"result": {"type": "boolean"}},
                        "additionalProperties": False,
                    },
                    "the answer, and nothing else about the person",
                ),
                "400": _error(
                    "no X-TransaktionsId, or not exactly one of cprNumber (10 "
                    "digits) and cvrNumber (8 digits)"
                ),
            },
        }
    }


def _error(description: str) -> dict[str, Any]:
    return _json({"$ref": "#/components/schemas/Error"}, description)


_KOMBI = "/sf1601/service/KombiPostAfsend_1"
_FORESPOERG = "/sf1601/service/PostForespoerg_1"
_SECURED = (
    "/memo",
    "/messages/{message_uuid}",
    "/journal",
    f"{_KOMBI}/kombi",
    f"{_KOMBI}/memos",
    f"{_FORESPOERG}/digitalpost",
    f"{_FORESPOERG}/nemsms",
)
_SHAPED = {f"{_KOMBI}/kombi", f"{_KOMBI}/memos"}  # refusals in SF1601's shape too


def openapi_document() -> dict[str, Any]:
    """The API description (a fresh dict each call)."""
    document = _document()
    for path in _SECURED:  # the authority's access token (connectors.authorities)
        refusal = _kombi if path in _SHAPED else _error
        for operation in document["paths"][path].values():
            operation["security"] = [{"authorityToken": []}]
            operation["responses"]["401"] = refusal("no, a damaged or an expired access token")
            operation["responses"]["403"] = refusal("the token is another authority's")
    return document


def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "DP2 ESDH connector",
            "version": "1.0.0",
            "description": "Submit MeMo 1.1/1.2 messages from a case system (ESDH) to DP2 "
            "and follow them. Business receipts and journaled post are pushed to the ESDH "
            "(receipts_url, journal_url); see docs/connectors.md. Under /sf1601/ the same "
            "in SF1601's shape (KombiPostAfsend, PostForespoerg); see "
            "docs/migrating-from-sf1601.md.",
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
                        "413": _error("REQUEST_TOO_LARGE: over 140 MiB, refused as it streams"),
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
            f"{_KOMBI}/kombi": _kombi_operation(
                "kombiPostAfsend", "SF1601 KombiPostAfsend: one kombi_request"
            ),
            f"{_KOMBI}/memos": _kombi_operation(
                "kombiPostAfsendMemos", "SF1601 KombiPostAfsend (the memos address)"
            ),
            f"{_FORESPOERG}/digitalpost": _lookup_operation(
                "postForespoergDigitalPost", "SF1601 PostForespoerg: registered for digital post?"
            ),
            f"{_FORESPOERG}/nemsms": _lookup_operation(
                "postForespoergNemSms", "SF1601 PostForespoerg: can a NemSMS reach the person?"
            ),
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
            "schemas": {"Error": _ERROR, "KombiResponse": _KOMBI_RESPONSE},
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
