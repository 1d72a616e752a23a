"""Fixtures of the root service manager tests: a store, an app, clients by caller address."""

from __future__ import annotations

import os
import sys
import uuid

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from oakestra_net import store
from root_service_manager.app import create_app
from root_service_manager.jwt_keys import KeyProvider

sys.path.insert(0, os.path.dirname(__file__))  # rsm_payloads

CLUSTER_ADDRESS = "192.0.2.10"


@pytest.fixture
def db():
    """The embedded store, or a fresh database on the real MongoDB when MONGO_URL is set."""
    if os.environ.get("MONGO_URL", "").startswith("mongodb"):
        database = store.connect("root", database=f"test_{uuid.uuid4().hex[:12]}")
        yield database
        database.client.drop_database(database.name)
    else:
        yield store.connect("root", env={})


@pytest.fixture(scope="session")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def public_pem(rsa_key) -> str:
    return (
        rsa_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture
def app(db, public_pem):
    app = create_app(
        {"DB": db, "KEYS": KeyProvider(static_key=public_pem), "OUTBOX_AUTOSTART": False}
    )
    yield app
    app.extensions["root"].outbox.stop()


@pytest.fixture
def root(app):
    return app.extensions["root"]


@pytest.fixture
def client(app):
    """A client calling from the registered cluster's address."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = CLUSTER_ADDRESS
    return client


@pytest.fixture
def stranger(app):
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = "198.51.100.7"
    return client
