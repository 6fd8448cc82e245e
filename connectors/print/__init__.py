"""Remote print: post for recipients who are not on digital post becomes a paper letter.

The router sends a message to ``dp2.print`` when its recipient is exempt from
digital post, unknown, or not in the contact register; its documents are then
encrypted for the print provider (provider id ``print``). The print connector
(connectors.print.connector) opens it with that provider's key, finds the postal
address in the contact register, renders one print-ready PDF (connectors.print.render:
a cover letter for a window envelope, then every page of every document), hands it
to the print provider — a folder drop, or an HTTP upload — and emits PRINTED. An
address that cannot be printed is FAILED with a reason that says how to fix it.
"""
