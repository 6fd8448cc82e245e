"""Mail connector: anyone writes securely to an authority from an ordinary mail client.

Why it exists: most people already have a mail client, and many letters to an
authority start there. This connector is an SMTP submission server: a citizen logs
in with their DP2 citizen token (STARTTLS, then AUTH), writes to ``<cvr>@<domain>``,
and the mail becomes a signed DP2 message from their CPR number to that authority.
As a mailbox provider it can also forward a citizen's post to their registered
e-mail address — the whole letter or only a notice, as they choose.

- ``connector``: configuration, start/stop/health, forwarding and its HTTP API.
- ``submission``: the SMTP server — TLS, login, addresses, sizes, reply codes.
- ``mime``: e-mail to MeMo and back, pure functions over bytes and values.
- ``store``: forwarding's durable queue and each citizen's choice (SQLite).
"""
