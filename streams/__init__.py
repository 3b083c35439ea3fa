"""The thin Kafka edge of recstream: faust agents, topics, error routing.

Agents decode raw bytes with ``contracts``, hand events to ``workers`` and
send what comes back; anything undecodable goes to the dead-letter topic.
"""

__all__: list[str] = []
