"""What can go wrong with messaging, and how a handler tells ``consume()`` what to do.

    MessagingError
    ├── PublishError             the broker did not take responsibility for a message
    │   ├── UnroutableError      no queue is bound for the routing key (mandatory publish returned)
    │   └── BrokerUnavailable    no connection, or no publisher confirm within the timeout
    └── RpcError
        └── RpcTimeout           no reply within the timeout (the serving service is down or slow)

    HandlerError                 raised by a message handler to steer acknowledgement
    ├── RetryableError           try again later (requeued until the delivery limit, then dead-lettered)
    └── PoisonMessage            never try again: dead-letter now, with the reason

Any other exception from a handler counts as retryable; a pydantic ``ValidationError`` counts as poison.
"""

from __future__ import annotations

__all__ = [
    "BrokerUnavailable",
    "HandlerError",
    "MessagingError",
    "PoisonMessage",
    "PublishError",
    "RetryableError",
    "RpcError",
    "RpcTimeout",
    "UnroutableError",
]


class MessagingError(Exception):
    """Base of every broker-side failure gridloop raises."""


class PublishError(MessagingError):
    """The broker did not confirm the message: it is not durable and the caller must not claim it is."""


class UnroutableError(PublishError):
    """The exchange had no binding for the routing key, so the message would have been lost."""


class BrokerUnavailable(PublishError):
    """The broker could not be reached or did not confirm in time."""


class RpcError(MessagingError):
    """A request/reply call failed."""


class RpcTimeout(RpcError):
    """No reply arrived within the timeout."""


class HandlerError(Exception):
    """Raised by a handler to choose what happens to the message it was given."""


class RetryableError(HandlerError):
    """A transient failure: deliver the message again later."""


class PoisonMessage(HandlerError):
    """The message can never be handled: dead-letter it with this exception's text as the reason."""
