r"""A local Google Cloud Storage for tests and walk-throughs, and the wiring of every GCS client.

  python -m glm_jax.testing.gcs_emulator --port=PORT --root=DIR [--bucket=NAME ...]

prints the `export NAME=VALUE` lines another shell needs, then serves in the foreground until
Ctrl-C (or SIGTERM). Objects are kept under DIR, so a restarted emulator serves them again.

The server is the `gcp-storage-emulator` package (the GCS JSON API over plain HTTP on
127.0.0.1:PORT). The three GCS clients glm_jax uses are pointed at it as follows:

- tensorstore (orbax writes and reads every array through it):
  `TENSORSTORE_GCS_HTTP_URL=http://127.0.0.1:PORT`; `GOOGLE_AUTH_TOKEN_FOR_TESTING` skips
  OAuth.
- TensorFlow's gfile GCS file system (the `gs://` backend of etils epath while TensorFlow is
  installed, so orbax's metadata and commit files, glm_jax's JSON/JSONL/gin files; and
  TensorBoard's event files): its endpoints `https://www.googleapis.com` and
  `https://storage.googleapis.com` are compiled in, with no override. It does honour libcurl's
  `https_proxy` and `CURL_CA_BUNDLE`, so this module also runs a proxy on PROXY_PORT
  (default PORT + 1) that accepts CONNECT to those two hosts only, terminates TLS with a
  certificate from a CA it creates under DIR/tls, and forwards each request to the emulator.
  `GOOGLE_AUTH_TOKEN_FOR_TESTING` skips OAuth; `no_proxy=127.0.0.1,localhost` keeps every
  other local connection (the emulator itself, jax.distributed's coordinator) direct.
- google-cloud-storage and gcsfs (not used by glm_jax): `STORAGE_EMULATOR_HOST`.

Writes honour GCS's generation preconditions (`ifGenerationMatch`, `ifGenerationNotMatch`:
412 when they fail), which the package ignores: the MODEL_DIR lock (glm_jax/run_lock.py) and
OCDBT's manifests rely on them.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import http
import http.client
import http.server
import logging
import os
import signal
import socketserver
import ssl
import sys
import threading
import urllib.parse
from typing import Dict, List, Optional, Sequence

try:
  from gcp_storage_emulator import server as emulator_server
  from gcp_storage_emulator import storage as emulator_storage
  from gcp_storage_emulator.handlers import buckets as emulator_buckets
  from gcp_storage_emulator.handlers import objects as emulator_objects
except ImportError as e:  # a test extra
  raise ImportError("The GCS emulator needs gcp-storage-emulator: pip install "
                    "'glm_jax[test]' (or pip install gcp-storage-emulator).") from e

HOST = "127.0.0.1"
DEFAULT_BUCKET = "glm-test"
GOOGLE_API_HOSTS = ("www.googleapis.com", "storage.googleapis.com")
# Hop-by-hop headers and those the proxy recomputes; never forwarded.
_HOP_HEADERS = {"connection", "proxy-connection", "keep-alive", "transfer-encoding", "expect",
                "content-length", "te", "trailer", "upgrade", "server", "date"}


class _Storage(emulator_storage.Storage):
  """The emulator's store with each object in one percent-encoded file.

  The package maps object `a/b` to the file `a/b`, so a directory marker object `a/` (which
  TensorFlow's gfile creates) and the object `a/b` collide on disk.
  """

  def _object_path(self, bucket_name, file_name):
    return f"{bucket_name}/{urllib.parse.quote(file_name, safe='')}"


class _ApiServer(http.server.HTTPServer):
  """The emulator's single-threaded server with room for many waiting connections."""

  request_queue_size = 256


class _ApiHandler(emulator_server.RequestHandler):
  # Headers and body go out in two writes; with Nagle's algorithm the second waits for the
  # client's delayed ACK (40 ms per request).
  disable_nagle_algorithm = True


def _insert(request, response, storage, *args, **kwargs):
  """objects.insert that also takes an empty media upload (the package fails on its body)."""
  if request.query.get("uploadType") == ["media"] and request.data is None:
    request._data = b""  # pylint: disable=protected-access
  return emulator_objects.insert(request, response, storage, *args, **kwargs)


def _with_generation(handler):
  """A read handler that also sends the object's generation headers, as GCS does.

  tensorstore takes a read object's generation from `x-goog-generation` for its conditional
  writes (OCDBT manifests); without it a concurrent write fails as 'Malformed
  StorageGeneration'.
  """

  def read(request, response, storage, *args, **kwargs):
    result = handler(request, response, storage, *args, **kwargs)
    if response.status in (http.HTTPStatus.OK, http.HTTPStatus.PARTIAL_CONTENT):
      try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
      except Exception:  # pylint: disable=broad-except
        return result
      response["x-goog-generation"] = obj["generation"]
      response["x-goog-metageneration"] = obj.get("metageneration", "1")
    return result

  read.wrapped = handler
  return read


def _with_preconditions(handler, object_name):
  """A write handler that honours `ifGenerationMatch` / `ifGenerationNotMatch`, as GCS does.

  A condition that fails answers 412 and changes nothing (generation 0: the object must not
  exist). tensorstore's conditional writes (glm_jax/run_lock.py, OCDBT manifests) rely on
  it; the package ignores both parameters. The server handles one request at a time, so the
  check and the write are atomic.
  """

  def write(request, response, storage, *args, **kwargs):
    match = request.query.get("ifGenerationMatch")
    not_match = request.query.get("ifGenerationNotMatch")
    if match or not_match:
      try:
        name = object_name(request)
        current = storage.get_file_obj(request.params["bucket_name"], name)["generation"]
      except Exception:  # pylint: disable=broad-except
        current = "0"
      if (match and match[0] != current) or (not_match and not_match[0] == current):
        response.status = http.HTTPStatus.PRECONDITION_FAILED
        response.json({"error": {"code": 412, "message": "Precondition Failed",
                                 "errors": [{"reason": "conditionNotMet"}]}})
        return None
    return handler(request, response, storage, *args, **kwargs)

  write.wrapped = handler
  return write


def _upload_name(request):
  if "name" in request.query:
    return request.query["name"][0]
  data = request.data if isinstance(request.data, dict) else {}
  return (data.get("meta") or data).get("name")


_FIXED = {}


def _install_fixes() -> None:
  """Uploads through _insert, reads with generation headers, writes with preconditions (this
  process's emulator only)."""
  if not _FIXED:
    _FIXED.update({emulator_objects.insert: _with_preconditions(_insert, _upload_name),
                   emulator_objects.delete: _with_preconditions(
                       emulator_objects.delete, lambda r: r.params["object_id"]),
                   emulator_objects.get: _with_generation(emulator_objects.get),
                   emulator_objects.download: _with_generation(emulator_objects.download)})
    emulator_server.HANDLERS = tuple(
        (regex, {m: _FIXED.get(h, h) for m, h in methods.items()})
        for regex, methods in emulator_server.HANDLERS)


# ------------------------------------------------------------------------------ TLS


def make_certificates(directory: str) -> Dict[str, str]:
  """A CA and a certificate for the Google API hosts signed by it, created once under `directory`.

  Returns {'ca': ca.pem, 'cert': server.pem, 'key': server.key}.
  """
  paths = {name: os.path.join(directory, file) for name, file in
           (("ca", "ca.pem"), ("cert", "server.pem"), ("key", "server.key"))}
  if all(os.path.exists(p) for p in paths.values()):
    return paths
  from cryptography import x509  # pylint: disable=g-import-not-at-top
  from cryptography.hazmat.primitives import hashes, serialization  # pylint: disable=g-import-not-at-top
  from cryptography.hazmat.primitives.asymmetric import ec  # pylint: disable=g-import-not-at-top
  from cryptography.x509.oid import NameOID  # pylint: disable=g-import-not-at-top
  os.makedirs(directory, exist_ok=True)
  now = datetime.datetime.now(datetime.timezone.utc)
  start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=3650)
  ca_key = ec.generate_private_key(ec.SECP256R1())
  ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "glm_jax GCS emulator CA")])
  ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
             .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(start).not_valid_after(end)
             .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
             .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                          crl_sign=True, content_commitment=False,
                                          key_encipherment=False, data_encipherment=False,
                                          key_agreement=False, encipher_only=False,
                                          decipher_only=False), critical=True)
             .sign(ca_key, hashes.SHA256()))
  key = ec.generate_private_key(ec.SECP256R1())
  cert = (x509.CertificateBuilder()
          .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GOOGLE_API_HOSTS[0])]))
          .issuer_name(ca_name).public_key(key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start)
          .not_valid_after(end)
          .add_extension(x509.SubjectAlternativeName(
              [x509.DNSName(h) for h in GOOGLE_API_HOSTS]), critical=False)
          .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
          .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
  pem = serialization.Encoding.PEM
  with open(paths["key"], "wb") as f:
    f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))
  with open(paths["cert"], "wb") as f:
    f.write(cert.public_bytes(pem))
  with open(paths["ca"], "wb") as f:
    f.write(ca_cert.public_bytes(pem))
  return paths


# ---------------------------------------------------------------------------- proxy


class _ForwardHandler(http.server.BaseHTTPRequestHandler):
  """Requests arriving inside a CONNECT tunnel, forwarded to the emulator one by one."""

  protocol_version = "HTTP/1.1"
  disable_nagle_algorithm = True

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    del format, args

  def _body(self) -> bytes:
    if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
      chunks = []
      while True:
        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
        if size == 0:
          while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
          return b"".join(chunks)
        chunks.append(self.rfile.read(size))
        self.rfile.readline()
    length = int(self.headers.get("Content-Length") or 0)
    return self.rfile.read(length) if length else b""

  def _forward(self):
    body = self._body()
    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
    if body or self.command in ("POST", "PUT", "PATCH"):
      headers["Content-Length"] = str(len(body))
    connection = http.client.HTTPConnection(*self.server.emulator_address, timeout=120)
    try:
      connection.request(self.command, self.path, body=body, headers=headers)
      response = connection.getresponse()
      data = response.read()
    finally:
      connection.close()
    self.send_response(response.status, response.reason)
    for name, value in response.getheaders():
      if name.lower() in _HOP_HEADERS:
        continue
      if name.lower() == "location" and value.startswith("http://"):
        value = "https://" + value[len("http://"):]  # the emulator echoes the Host it was sent
      self.send_header(name, value)
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    if self.command != "HEAD":
      self.wfile.write(data)

  do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _forward


class _ConnectHandler(http.server.BaseHTTPRequestHandler):
  """CONNECT www.googleapis.com:443 (and storage.googleapis.com): TLS, then _ForwardHandler."""

  protocol_version = "HTTP/1.1"
  disable_nagle_algorithm = True

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    del format, args

  def do_CONNECT(self):  # pylint: disable=invalid-name
    host = self.path.rsplit(":", 1)[0]
    if host not in GOOGLE_API_HOSTS:
      self.send_error(403, f"This proxy only serves {', '.join(GOOGLE_API_HOSTS)}")
      return
    self.send_response(200, "Connection established")
    self.end_headers()
    self.close_connection = True
    try:
      tunnel = self.server.tls.wrap_socket(self.connection, server_side=True)
    except (ssl.SSLError, OSError):
      return
    try:
      _ForwardHandler(tunnel, self.client_address, self.server)
    except (ssl.SSLError, OSError, ConnectionError):
      pass
    finally:
      try:
        tunnel.close()
      except OSError:
        pass


class _ProxyServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
  daemon_threads = True
  request_queue_size = 256


# ------------------------------------------------------------------------- emulator


class GcsEmulator:
  """The emulator and its TLS proxy on 127.0.0.1; `env` points every GCS client at them."""

  def __init__(self, root: str, port: int = 0, proxy_port: Optional[int] = None,
               buckets: Sequence[str] = (DEFAULT_BUCKET,)):
    self.root = os.path.abspath(root)
    self._port, self._proxy_port = port, proxy_port
    self.buckets = tuple(buckets)
    self._servers: List[http.server.HTTPServer] = []
    self._threads: List[threading.Thread] = []
    self.port = self.proxy_port = None
    self.ca_file = None

  def start(self) -> "GcsEmulator":
    logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)
    _install_fixes()
    storage = _Storage(data_dir=os.path.join(self.root, "storage"))
    for name in self.buckets:
      emulator_buckets.create_bucket(name, storage)
      # Deleted objects go at once (the package keeps soft-deleted copies for 7 days).
      storage.buckets[name]["softDeletePolicy"] = {"retentionDurationSeconds": "0"}
    storage._write_config_to_file()  # pylint: disable=protected-access
    api = _ApiServer((HOST, self._port),
                     functools.partial(_ApiHandler, storage))
    self.port = api.server_address[1]
    proxy_port = self.port + 1 if self._proxy_port is None else self._proxy_port
    proxy = _ProxyServer((HOST, proxy_port), _ConnectHandler)
    self.proxy_port = proxy.server_address[1]
    tls_files = make_certificates(os.path.join(self.root, "tls"))
    self.ca_file = tls_files["ca"]
    proxy.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    proxy.tls.load_cert_chain(tls_files["cert"], tls_files["key"])
    proxy.emulator_address = (HOST, self.port)
    self._servers = [api, proxy]
    for srv in self._servers:
      thread = threading.Thread(target=srv.serve_forever, daemon=True)
      thread.start()
      self._threads.append(thread)
    return self

  def stop(self) -> None:
    for srv in self._servers:
      srv.shutdown()
      srv.server_close()
    for thread in self._threads:
      thread.join(timeout=5)
    self._servers, self._threads = [], []

  def __enter__(self) -> "GcsEmulator":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()

  @property
  def env(self) -> Dict[str, str]:
    """Environment variables that point tensorstore, TF gfile and GCS SDKs at this emulator."""
    if self.port is None:
      raise RuntimeError("Start the emulator first.")
    return emulator_env(self.port, self.proxy_port, self.ca_file)


def emulator_env(port: int, proxy_port: int, ca_file: str) -> Dict[str, str]:
  url = f"http://{HOST}:{port}"
  proxy = f"http://{HOST}:{proxy_port}"
  local = f"{HOST},localhost"
  return {
      "TENSORSTORE_GCS_HTTP_URL": url,
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
      "https_proxy": proxy,
      "HTTPS_PROXY": proxy,
      "no_proxy": local,
      "NO_PROXY": local,
      "CURL_CA_BUNDLE": ca_file,
      "NO_GCE_CHECK": "true",
      "STORAGE_EMULATOR_HOST": url,
  }


def export_lines(env: Dict[str, str]) -> List[str]:
  import shlex  # pylint: disable=g-import-not-at-top
  return [f"export {k}={shlex.quote(v)}" for k, v in env.items()]


class _Parser(argparse.ArgumentParser):
  """argparse with a bad argument as one `error:` line (exit 2), the style of every CLI."""

  def error(self, message):
    from glm_jax import gin_utils  # pylint: disable=g-import-not-at-top
    gin_utils.exit_with_error(ValueError(f"{message} (see --help)."))


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = _Parser(
      prog="python -m glm_jax.testing.gcs_emulator",
      description="A local GCS (gcp-storage-emulator) with the wiring of tensorstore, "
                  "TensorFlow gfile and the GCS SDKs; prints the exports, then serves.")
  parser.add_argument("--port", type=int, default=9023, help="Emulator port on 127.0.0.1.")
  parser.add_argument("--proxy_port", type=int, default=None,
                      help="TLS proxy port for TensorFlow's gfile (default: PORT + 1).")
  parser.add_argument("--root", required=True, help="Directory that keeps the objects.")
  parser.add_argument("--bucket", action="append", default=None,
                      help=f"Bucket to create (repeatable; default {DEFAULT_BUCKET}).")
  args = parser.parse_args(argv)
  emulator = GcsEmulator(args.root, args.port, args.proxy_port,
                         buckets=args.bucket or (DEFAULT_BUCKET,))
  try:
    emulator.start()
  except OSError as e:
    from glm_jax import gin_utils  # pylint: disable=g-import-not-at-top
    gin_utils.exit_with_error(ValueError(
        f"cannot listen on {HOST}:{args.port} or its proxy port, or write --root "
        f"({e.strerror}); pick free ports with --port / --proxy_port and a writable --root."))
  for line in export_lines(emulator.env):
    print(line)
  print(f"# GCS emulator on {HOST}:{emulator.port} (buckets: {', '.join(emulator.buckets)}), "
        f"TLS proxy on {HOST}:{emulator.proxy_port}, objects under {emulator.root}. "
        "Ctrl-C stops it.", flush=True)
  stopped = threading.Event()
  signal.signal(signal.SIGTERM, lambda *_: stopped.set())
  try:
    while not stopped.wait(0.5):
      pass
  except KeyboardInterrupt:
    pass
  finally:
    emulator.stop()
  return 0


if __name__ == "__main__":
  sys.exit(main())
