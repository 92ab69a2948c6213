"""Reading the tensors of a small `torch.save` file in the pre-1.6 (non-zip) format without torch:
the DISTS alpha/beta weights that the DISTS_pytorch package ships (metrics.dists_params). Only
plain tensors are unpickled; any other object in the file is refused."""

import pickle

import numpy as np

# dtype of each legacy torch storage class that a small weights file may hold.
_TORCH_STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64}


class _LegacyTorchUnpickler(pickle.Unpickler):
  """Unpickles only plain tensors (any other class is refused) and notes each storage's dtype."""

  def __init__(self, file):
    super().__init__(file)
    self.storage_dtypes = {}

  def find_class(self, module, name):
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
      return lambda storage_key, offset, size, stride, *unused: (storage_key, offset, size, stride)
    if module == "torch" and name in _TORCH_STORAGE_DTYPES:
      return _TORCH_STORAGE_DTYPES[name]
    if (module, name) == ("collections", "OrderedDict"):
      return dict
    raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a weights file")

  def persistent_load(self, pid):
    _, dtype, key, _, _, _ = pid  # ('storage', type, key, location, numel, view)
    self.storage_dtypes[key] = np.dtype(dtype).newbyteorder("<")
    return key


def _contiguous_strides(size):
  return tuple(int(np.prod(size[i + 1:])) for i in range(len(size)))


def read_legacy_torch_tensors(path) -> dict:
  """{name: ndarray} from a `torch.save` file in the pre-1.6 (non-zip) format, without torch.

  Layout: pickles of magic number, protocol, system info, the object (tensors refer to
  storages by key), the storage keys; then per storage an int64 element count and raw data.
  """
  with open(path, "rb") as f:
    for _ in range(3):
      pickle.load(f)
    unpickler = _LegacyTorchUnpickler(f)
    tensors = unpickler.load()
    storages = {}
    for key in pickle.load(f):
      dtype = unpickler.storage_dtypes[key]
      (numel,) = np.frombuffer(f.read(8), "<i8")
      storages[key] = np.frombuffer(f.read(int(numel) * dtype.itemsize), dtype)
  out = {}
  for name, (key, offset, size, stride) in tensors.items():
    if tuple(stride) != _contiguous_strides(size):
      raise ValueError(f"{path}: tensor {name} is not contiguous")
    count = int(np.prod(size))
    out[name] = storages[key][offset:offset + count].reshape(size).copy()
  return out
