"""The one exception type that the CLI turns into a one-line message and a non-zero exit."""


class UserError(Exception):
  """Bad input from the user: a wrong path, a corrupt file, a checkpoint of another model.

  Raised anywhere in the library; `linearsr` prints `linearsr: error: <message>` and exits 2
  instead of showing a traceback.
  """
