"""Connectors: the SDK vendors build on (``connectors.sdk``) and the built-in
connectors at the edges of the backbone (the reference mailbox provider now; ESDH,
forms, apps, mail, print and notification workers as they arrive).
"""
