"""docker/: the compose file and Helm values, checked statically (no Docker engine here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml  # pyyaml, in the `dev` extra

pytestmark = pytest.mark.unit

DOCKER = Path(__file__).resolve().parent.parent / "docker"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load((DOCKER / "milvus-cluster-values.yaml").read_text())


def _milvus_tag(image: str) -> str:
    repository, tag = image.rsplit(":", 1)
    assert repository == "milvusdb/milvus"
    assert re.fullmatch(r"v2\.5\.\d+", tag), f"not a Milvus 2.5.x tag: {tag}"
    return tag


def test_compose_runs_milvus_2_5_standalone_with_etcd_and_minio(compose):
    services = compose["services"]
    assert set(services) == {"etcd", "minio", "standalone"}
    assert services["etcd"]["image"].startswith("quay.io/coreos/etcd:v3.5")
    assert services["minio"]["image"].startswith("minio/minio:")
    milvus = services["standalone"]
    _milvus_tag(milvus["image"])
    assert milvus["command"] == ["milvus", "run", "standalone"]
    # Milvus finds its dependencies by their service names and ports.
    assert milvus["environment"]["ETCD_ENDPOINTS"] == "etcd:2379"
    assert milvus["environment"]["MINIO_ADDRESS"] == "minio:9000"
    assert "listen-client-urls=http://0.0.0.0:2379" in services["etcd"]["command"]
    assert "minio server" in services["minio"]["command"]
    assert {d: c["condition"] for d, c in milvus["depends_on"].items()} == {
        "etcd": "service_healthy",
        "minio": "service_healthy",
    }


def test_compose_publishes_19530_and_9091_with_a_health_check(compose):
    milvus = compose["services"]["standalone"]
    assert {tuple(p.split(":")) for p in map(str, milvus["ports"])} >= {
        ("19530", "19530"),
        ("9091", "9091"),
    }
    assert "http://localhost:9091/healthz" in milvus["healthcheck"]["test"]
    for service in compose["services"].values():
        assert service["healthcheck"]["test"][0] == "CMD"


def test_helm_values_describe_a_milvus_2_5_cluster(values, compose):
    assert values["cluster"]["enabled"] is True
    assert values["image"]["all"]["repository"] == "milvusdb/milvus"
    # The cluster runs the same server version as the compose file.
    tag = _milvus_tag(compose["services"]["standalone"]["image"])
    assert values["image"]["all"]["tag"] == tag
    assert values["service"]["port"] == 19530
    for component in ("proxy", "queryNode", "indexNode", "dataNode", "mixCoordinator"):
        assert values[component]["replicas"] >= 1
    assert values["etcd"]["replicaCount"] >= 1
    # Exactly one message queue.
    assert [q for q in ("pulsar", "pulsarv3", "kafka") if values.get(q, {}).get("enabled")] == [
        "pulsarv3"
    ]


def test_readme_explains_both_and_how_to_point_at_them():
    readme = (DOCKER / "README.md").read_text()
    for needle in (
        "docker/docker-compose.yml",
        "docker/milvus-cluster-values.yaml",
        "--uri http://localhost:19530",
        "MEET_MILVUS_URI",
        "milvus_uri =",
    ):
        assert needle in readme
