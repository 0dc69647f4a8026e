"""Both simulators on loopback behind one ephemeral CA, for tests, benchmarks and ``sfsync sim``.

    with Simulators() as sims:
        run_worker(env=sims.env())
        assert sims.sf.task(task_id)["SMS_Status__c"] == "Delivered"
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sfsync.sim.base import FaultConfig, SimServer
from sfsync.sim.messagemedia import MessageMediaSim
from sfsync.sim.salesforce import SalesforceSim
from sfsync.sim.tls import EphemeralCA

JWT_KEY_FILE = "jwt-private-key.pem"
# The Salesforce simulator's defaults, restated so info() never depends on its attribute names.
SF_DEFAULTS: dict[str, Any] = {
    "client_id": "sim-client-id",
    "client_secret": "sim-client-secret",
    "username": "integration@sim.example",
}


class Simulators:
    """MessageMedia and Salesforce simulators, bound at construction (URLs are known at once),
    serving between ``start()`` and ``stop()`` (or inside ``with``)."""

    def __init__(
        self,
        *,
        tls_dir: Path | None = None,
        mm_faults: FaultConfig | None = None,
        sf_faults: FaultConfig | None = None,
        sf_options: dict[str, Any] | None = None,
        mm_options: dict[str, Any] | None = None,
        mm_port: int = 0,
        sf_port: int = 0,
    ):
        # A folder we made is ours to remove on stop; a given one is left alone.
        self._owned_dir: Path | None = None
        if tls_dir is None:
            self._owned_dir = folder = Path(tempfile.mkdtemp(prefix="sfsync-sim-"))
        else:
            folder = Path(tls_dir).resolve()  # the settings name its files from any folder
        self._state = "bound"  # then "serving", then "stopped" (a closed server cannot restart)
        self.mm_server: SimServer | None = None
        self.sf_server: SimServer | None = None
        try:
            self.ca = EphemeralCA.create(folder)
            self.jwt_private_key_file, public_pem = _jwt_key_pair(folder)
            self._sf_settings = {**SF_DEFAULTS, **(sf_options or {})}
            self._sf_settings.setdefault("jwt_public_key_pem", public_pem)
            self.mm = MessageMediaSim(faults=mm_faults, **(mm_options or {}))
            self.sf = SalesforceSim(faults=sf_faults, **self._sf_settings)
            self.mm_server = SimServer(self.mm, self.ca, port=mm_port)
            self.sf_server = SimServer(self.sf, self.ca, port=sf_port)
        except BaseException:
            self.stop()  # release a port already bound, and our folder
            raise

    def _servers(self) -> tuple[SimServer, SimServer]:
        assert self.mm_server is not None and self.sf_server is not None
        return self.mm_server, self.sf_server

    def start(self) -> Simulators:
        if self._state == "stopped":
            raise RuntimeError("these simulators were stopped; make new ones")
        if self._state == "bound":
            for server in self._servers():
                server.start()
            self._state = "serving"
        return self

    def stop(self) -> None:
        """Stop both servers (idempotent) and remove the TLS folder if we created it."""
        if self._state != "stopped":
            for server in (self.mm_server, self.sf_server):
                if server is not None:
                    server.stop()
            self._state = "stopped"
        if self._owned_dir is not None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)
            self._owned_dir = None

    def __enter__(self) -> Simulators:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def info(self) -> dict[str, Any]:
        """What a client needs to reach both simulators (printed by ``sfsync sim``)."""
        mm_server, sf_server = self._servers()
        return {
            "messagemedia_url": mm_server.url,
            "salesforce_url": sf_server.url,
            "salesforce_login_url": sf_server.url,  # token endpoint: /services/oauth2/token
            "ca_bundle": str(self.ca.ca_bundle),
            "mm_api_key": self.mm.api_key,
            "mm_api_secret": self.mm.api_secret,
            "sf_client_id": self._sf_settings["client_id"],
            "sf_client_secret": self._sf_settings["client_secret"],
            "mm_account_id": self.mm.account_id,
            "sf_username": self._sf_settings["username"],
            "sf_private_key_file": str(self.jwt_private_key_file),
        }

    def env(self) -> dict[str, str]:
        """The worker's environment for these simulators."""
        info = self.info()
        return {
            "SFSYNC_MM_BASE_URL": info["messagemedia_url"],
            "SFSYNC_MM_API_KEY": info["mm_api_key"],
            "SFSYNC_MM_API_SECRET": info["mm_api_secret"],
            "SFSYNC_SF_LOGIN_URL": info["salesforce_login_url"],
            "SFSYNC_SF_CLIENT_ID": info["sf_client_id"],
            "SFSYNC_SF_CLIENT_SECRET": info["sf_client_secret"],
            "SFSYNC_CA_BUNDLE": info["ca_bundle"],
        }


def _jwt_key_pair(folder: Path) -> tuple[Path, bytes]:
    """An RSA key for the JWT bearer flow: the private half on disk for the worker, the public
    half for the Salesforce simulator (as a connected app's certificate would hold it)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = folder / JWT_KEY_FILE
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    with contextlib.suppress(OSError):
        path.chmod(0o600)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return path, public_pem
