"""Connectors: the SDK vendors build on, the connector contract, and the built-in ones.

    sdk          what a vendor imports: build, seal, sign and submit; follow receipts
                 (light: no HTTP server, store, metrics or services on import)
    base         the Connector protocol, discovery (entry points), connectors.toml
    delivery     the receiving end every mailbox shares: verify, decrypt, DELIVERED
    documents    a received document's bytes, inline or kept in the receiver's store
    bodies       request bodies streamed and refused past a limit
    mailbox      the reference mailbox provider (a built-in service)
    citizens     citizen identity (tokens) shared by forms, apps and mail
    esdh/        authorities' case systems: MeMo over HTTP and folders, receipts
    forms, apps  self-service forms and the mailbox-app API (citizen-facing)
    mail/        mail clients: SMTP submission and forwarding as e-mail
    print/       remote print: print-ready PDFs for recipients without digital post
    notify/      the notifier: exactly-once SMS and e-mail alerts (a built-in service)

MeMo XML itself lives in schemas.memo, so every user of it reaches it without
importing a connector.
"""
