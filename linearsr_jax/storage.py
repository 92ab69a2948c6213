"""Where files live: a local path or an object-store URL (gs://bucket/prefix), behind one
door. Every path the CLI takes goes through `path()`.

URLs become `etils.epath` paths, the type Orbax uses: epath sends gs:// to tf.io.gfile, so the
checkpoints' directories, our JSON, TensorBoard and the images share one GCS client, with the
standard Google credentials. Local paths stay `pathlib` paths: epath's local paths cannot glob
recursively, and the local-only guarantees (exclusive create, rename into place, free space)
need the OS's own calls.
"""

import contextlib
import os
import pathlib
import re
import shutil
import tempfile

from etils import epath


def is_url(p) -> bool:
  return "://" in str(p)


def path(p):
  """`p` as a path object: epath for a URL, pathlib for a local path."""
  return epath.Path(str(p)) if is_url(p) else pathlib.Path(p)


def absolute(p):
  """`p` as a path, a local one made absolute (Orbax refuses relative checkpoint paths)."""
  p = path(p)
  return p if is_url(p) else p.absolute()


def move(src, dst):
  """Renames a file or folder. On object storage a folder is only a prefix with no rename:
  each object is copied, then the source deleted (a kill in between leaves both whole)."""
  if not is_url(src):
    os.replace(src, dst)
    return
  for folder, _, names in src.walk():
    for name in names:
      (folder / name).copy(dst / (folder / name).relative_to(src).as_posix())
  src.rmtree()


@contextlib.contextmanager
def errors_as_one_line(what: str):
  """An object-store client's error in the block as a UserError: `what`: the reason."""
  from linearsr_jax.errors import UserError

  try:
    yield
  except UserError:
    raise
  except Exception as e:
    raise UserError(f"{what}: {describe(e)}") from e


def describe(error: BaseException) -> str:
  """One line for an object-store client's error (TF's and TensorStore's carry the HTTP
  exchange over several lines)."""
  text = str(getattr(error, "message", None) or error)
  found = re.search(r"(?:HTTP response code |http_response_code=')(\d+)", text)
  # TF's and TensorStore's errors name the HTTP status in their text; google-cloud-storage's
  # carry it as `.code` (TF's `.code` is a gRPC code, not an HTTP one).
  status = found.group(1) if found else (
      str(error.code) if isinstance(getattr(error, "code", None), int) else None)
  reasons = {
      "404": "not found (does the bucket exist?)", "403": "permission denied",
      "401": "not authenticated (application-default credentials?)"
  }
  first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
  return reasons.get(status, first)


def output_dir(p, flag: str):
  """The output folder `p` as a path, created now (a local one) so that an unusable one is one
  line before any work, not an error after it."""
  from linearsr_jax.errors import UserError

  p = path(p)
  if is_url(p):
    return p
  try:
    p.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UserError(f"{flag} {p}: cannot create the folder ({e.strerror or e})") from None
  if not os.access(p, os.W_OK | os.X_OK):
    raise UserError(f"{flag} {p}: the folder is not writable")
  return p


def upload(local, url):
  """Streams the local file `local` into the object `url` (one upload: it appears whole)."""
  with open(local, "rb") as src, url.open("wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 24)


def files(root, recursive: bool = True) -> list:
  """The files under `root`, sorted (epath cannot glob `**` on object storage: it walks)."""
  if not is_url(root):
    return sorted(p for p in root.glob("**/*" if recursive else "*") if p.is_file())
  found = []
  for folder, _, names in root.walk():
    found += [folder / name for name in names]
    if not recursive:
      break
  return sorted(found)


@contextlib.contextmanager
def local_file(p):
  """A local filename with `p`'s bytes, for readers that need one (np.load, safetensors, csv):
  `p` itself, or for an object a temporary download of it."""
  p = path(p)
  if not is_url(p):
    yield p
    return
  with tempfile.TemporaryDirectory(prefix="linearsr-") as tmp:
    copy = pathlib.Path(tmp) / p.name
    with errors_as_one_line(f"cannot read {p}"):
      copy.write_bytes(p.read_bytes())
    yield copy
