"""The Kafka backbone of DP2: settings, logging, topics, the local Kafka runner
and the ``dp2`` command line (later also security, validator, router, contact
register and HTTP gateway).

Only this package and the connectors at the edges talk to Kafka; ``schemas`` stays
pure so that vendors can use the codec without a broker.
"""
