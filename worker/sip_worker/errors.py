"""The phone's refusals and failures; the servicer maps each class to one gRPC status code.

Messages are meant for the API client: they say what was wrong and never carry a password.
"""


class PhoneError(Exception):
    """A request the phone refused or could not carry out; nothing changed unless stated."""


class InvalidArgument(PhoneError):
    """The request itself is malformed (INVALID_ARGUMENT)."""


class WrongState(PhoneError):
    """The request does not fit the current session or call state (FAILED_PRECONDITION)."""


class AuthenticationFailed(PhoneError):
    """The registrar refused the account's credentials (PERMISSION_DENIED)."""


class Unreachable(PhoneError):
    """A peer or registrar did not answer, or the phone is shutting down (UNAVAILABLE)."""


class TooLarge(PhoneError):
    """The request exceeds a configured size limit (RESOURCE_EXHAUSTED)."""
