"""The contracts every DP2 service shares.

Services, connectors and the tracing dashboard are deployed and upgraded separately,
yet they must agree on what travels through Kafka. This package is that agreement and
nothing else:

- `*.avsc` — the Avro schemas (namespace dk.dp2), with every released version kept in
  `history/` so compatibility can be checked (`schemas.compat`);
- `schemas.models` — typed frozen dataclasses mirroring the schemas;
- `schemas.codec` — single-object encoding: every record names its schema;
- `schemas.errors` — `Dp2Error`, the one exception root of the project;
- `schemas.vocabulary` — every topic and header name, declared once;
- `schemas.memo` and `schemas.memo_rules` — MeMo XML to the models and back, and
  MeMo's rules with their reason codes (used by the CLI, ESDH, forms, apps, mail).

It is pure: no I/O except reading its own .avsc files at import.
"""
