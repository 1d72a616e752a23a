"""Payloads exactly as Oakestra's root system manager sends them (reference §2.1)."""

from __future__ import annotations

X1_ID = "6630f0f0f0f0f0f0f0f0f001"
X3_ID = "6630f0f0f0f0f0f0f0f0f003"


def service_payload(job_id: str, service: str, rr_ip: str | None = None, **extra) -> dict:
    descriptor = {
        "app_name": "X",
        "app_ns": "default",
        "service_name": service,
        "service_ns": "default",
        "microservice_name": service,
        "microservice_namespace": "default",
        "virtualization": "container",
        "code": f"docker.io/X/{service}",
        "RR_ip": rr_ip,
        "RR_ip_v6": None,
        "addresses": {"rr_ip": rr_ip} if rr_ip else None,
        **extra,
    }
    return {"_id": job_id, "deployment_descriptor": descriptor}


def register_cluster(client, cluster_id: str = "c1", address: str = "192.0.2.10") -> None:
    body = {"cluster_id": cluster_id, "cluster_address": address, "cluster_port": 10110}
    response = client.post("/api/net/cluster", json=body)
    assert response.status_code == 200, response.get_json()
