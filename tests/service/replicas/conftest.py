"""The replicas' fixtures (tests.support.replicas), for the tests of this folder."""

from tests.support.replicas import make_replicas, replica_twilio

__all__ = ["make_replicas", "replica_twilio"]
