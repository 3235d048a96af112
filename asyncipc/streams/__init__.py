"""Durable streams: the message-queue row (``docs/streams.md``).

A stream keeps every message published on its subjects until its limits say otherwise;
consumers read it at their own pace, each message to one of their workers at a time,
redelivered until acknowledged::

    stream = await bus.stream("ORDERS", subjects=["orders.>"])
    ack = await stream.publish("orders.created", b"...", msg_id="o-7")
    consumer = await stream.consumer("billing", ack_wait=30, max_deliver=5,
                                     dead_letter="orders.dead")
    async for msg in consumer:
        ...
        await msg.ack()

The broker keeps streams under ``--store DIR`` (``Broker(store=...)``); without a store
they live in its memory, and ``stream.info().storage`` says ``"memory"``.
"""

from .client import Consumer, Stream, StreamMessage
from .config import ConsumerConfig, ConsumerInfo, PubAck, StreamConfig, StreamInfo

__all__ = [
    "Consumer",
    "ConsumerConfig",
    "ConsumerInfo",
    "PubAck",
    "Stream",
    "StreamConfig",
    "StreamInfo",
    "StreamMessage",
]
