"""Errors of kernel operations; their messages name the object and the reason."""


class KernelError(Exception):
    """A kernel operation failed; the message names the object and the reason."""


class InterfaceNotFound(KernelError):
    """A network interface the operation needs does not exist."""


class NamespaceNotFound(KernelError):
    """A network namespace does not exist (any more)."""
