"""Fail instead of hanging: a matrix must report every cell, never wait on one forever."""
import contextlib
import signal


@contextlib.contextmanager
def deadline(seconds: int):
    def expired(*_):
        raise TimeoutError(f"the matrix did not finish within {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
