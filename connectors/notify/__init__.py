"""The notification workers: tell a recipient by SMS or e-mail that new digital post waits.

Why: a recipient who has asked for notifications should learn once that a letter has
arrived, so they log in to read it. A notification never carries the letter's content,
only who sent it and, when the sender marked it non-sensitive, its label.

- ``templates``: the texts, pure functions (Danish by default, English on request).
- ``channels``: the SMS providers with failover and the SMTP sender, behind small seams.
- ``service``: the worker that consumes lifecycle events and sends through the channels.
"""
