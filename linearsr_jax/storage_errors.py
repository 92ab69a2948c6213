"""What an error while reading a checkpoint means: damage of our own files (set the step
aside), a storage error (retry, then one line; the files are left as they were), or neither (a
bug: it propagates).

TensorStore reports both kinds as a ValueError whose text starts with an absl status code:
DATA_LOSS or OUT_OF_RANGE (a truncated file) is the file's; UNAVAILABLE or ABORTED (GCS
answering 503, a dropped connection) is the storage's. The Python clients (google-cloud-storage,
requests, the OS) raise their own types, told apart by name here so that none is imported.
"""

import logging
import re
import time

from linearsr_jax import storage
from linearsr_jax.errors import UserError

log = logging.getLogger(__name__)

# Tries of a read before its storage error is the user's to see, and the wait before the second
# (doubled before each next): about a minute and a half in all, what a GCS hiccup or a token
# refresh takes. Module constants, so that tests can shrink them.
ATTEMPTS = 6
FIRST_WAIT_S = 3.0

_DAMAGE_CODES = ("DATA_LOSS", "OUT_OF_RANGE", "NOT_FOUND", "INVALID_ARGUMENT",
                 "FAILED_PRECONDITION")
_STORAGE_CODES = ("UNAVAILABLE", "ABORTED", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "CANCELLED",
                  "INTERNAL", "UNKNOWN", "PERMISSION_DENIED", "UNAUTHENTICATED")
_CODE = re.compile(r"\b(" + "|".join(_DAMAGE_CODES + _STORAGE_CODES) + r"): ")
# google.api_core's, requests', urllib3's and TF's exceptions for a service that did not answer
# as it should (ServerError covers every 5xx).
_STORAGE_TYPES = ("ServerError", "TooManyRequests", "Forbidden", "Unauthorized", "RetryError",
                  "TransportError", "RefreshError", "ConnectionError", "ChunkedEncodingError",
                  "ReadTimeout", "ConnectTimeout", "ProtocolError", "UnavailableError",
                  "AbortedError", "DeadlineExceededError", "ResourceExhaustedError",
                  "PermissionDeniedError", "UnauthenticatedError")


def _first_line(error: BaseException) -> str:
  return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def _chain(error: BaseException):
  while error is not None:
    yield error
    error = error.__cause__ or error.__context__


def _kind(error: BaseException):
  """'damage', 'storage' or None for this one error (not its chain)."""
  found = _CODE.search(str(error).split("\n", 1)[0])
  if found:
    return "damage" if found.group(1) in _DAMAGE_CODES else "storage"
  names = {t.__name__ for t in type(error).__mro__}
  if names & set(_STORAGE_TYPES) or isinstance(error, (ConnectionError, TimeoutError)):
    return "storage"
  if isinstance(error, FileNotFoundError):  # the path is inside the step being read
    return "damage"
  if type(error).__name__ == "JSONDecodeError" or isinstance(error, UnicodeDecodeError):
    return "damage"
  if isinstance(error, OSError):  # EIO, a stale NFS handle: the device's, not the file's
    return "storage"
  return None


def damage(error: BaseException):
  """The first line of the file damage behind `error` (a truncated or missing file, bytes that
  do not decode), or None when there is none. A storage error anywhere in the chain is not
  damage, whatever else it caused."""
  kinds = [(_kind(e), e) for e in _chain(error)]
  if any(kind == "storage" for kind, _ in kinds):
    return None
  return next((_first_line(e) for kind, e in kinds if kind == "damage"), None)


def storage_error(error: BaseException):
  """The one line of the storage error behind `error`, or None when there is none."""
  return next((storage.describe(e) for e in _chain(error) if _kind(e) == "storage"), None)


def retried(read, where: str, on_give_up=lambda: None):
  """`read()`, tried again after a storage error, waiting FIRST_WAIT_S, then twice as long each
  time; after ATTEMPTS tries a UserError naming `where` and the cause (`on_give_up` first).
  Damage and other errors propagate at once."""
  wait = FIRST_WAIT_S
  for attempt in range(1, ATTEMPTS + 1):
    try:
      return read()
    except UserError:
      raise
    except Exception as e:
      cause = storage_error(e)
      if cause is None:
        raise
      if attempt == ATTEMPTS:
        on_give_up()
        raise UserError(f"cannot read {where}: storage error after {ATTEMPTS} tries ({cause}); "
                        "nothing was changed, start again when the storage answers") from e
      log.warning("reading %s: storage error (%s); try %d of %d in %.0f s", where, cause,
                  attempt + 1, ATTEMPTS, wait)
      time.sleep(wait)
      wait *= 2
