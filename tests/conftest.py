import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_data():
    """Path to ``../shared/data``; skips the test when the shared folder is absent."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip("../shared/data is absent")
    return path


@pytest.fixture(scope="session")
def shared_models():
    """Path to ``../shared/models``; skips the test when the shared folder is absent."""
    path = SHARED / "models"
    if not path.is_dir():
        pytest.skip("../shared/models is absent")
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private cpzarr cache (``CPZARR_CACHE``), so tests neither read nor write the user's."""
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("CPZARR_CACHE")
    os.environ["CPZARR_CACHE"] = str(path)
    yield path
    if old is None:
        del os.environ["CPZARR_CACHE"]
    else:
        os.environ["CPZARR_CACHE"] = old


#: The bucket the ``s3`` fixture makes on its server.
S3_BUCKET = "cpzarr-test"


@pytest.fixture(scope="session")
def s3():
    """An S3-compatible server (moto's standalone server on 127.0.0.1, a free port) with a bucket.

    Yields the fsspec ``storage_options`` that reach it (key, secret, ``endpoint_url``); the
    bucket is :data:`S3_BUCKET`. Skips the test only when moto's server or s3fs is not installed
    or the server cannot start. Tests put their objects under a prefix of their own.
    """
    import logging
    import socket

    pytest.importorskip("s3fs")
    server_module = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    try:
        server.start()
    except Exception as error:  # noqa: BLE001 - any failure to start means: no server here
        pytest.skip(f"moto's S3 server cannot start: {error}")
    options = {"key": "testing", "secret": "testing", "endpoint_url": f"http://127.0.0.1:{port}"}
    import s3fs

    s3fs.S3FileSystem(**options).mkdir(S3_BUCKET)
    yield options
    server.stop()


@pytest.fixture(scope="session")
def s3_put(s3):
    """``put(local, key)``: copy a local file or folder to ``s3://<bucket>/<key>``; returns the URL."""
    import s3fs

    fs = s3fs.S3FileSystem(**s3)

    def put(local, key):
        url = f"s3://{S3_BUCKET}/{key}"
        local = Path(local)
        if local.is_dir():
            for path in sorted(p for p in local.rglob("*") if p.is_file()):
                fs.put_file(str(path), f"{url}/{path.relative_to(local).as_posix()}")
        else:
            fs.put_file(str(local), url)
        fs.invalidate_cache()
        return url

    return put
