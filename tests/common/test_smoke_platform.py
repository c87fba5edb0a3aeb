"""The platform comes up on real servers and every process answers its health checks."""

import httpx

from forge_dev.testing import Platform


async def test_every_service_is_ready(platform: Platform) -> None:
    async with httpx.AsyncClient() as client:
        for name in ("pipeline", "release", "deployment", "approval"):
            resp = await client.get(f"{platform.service_url(name)}/readyz")
            assert resp.status_code == 200, (name, resp.text)
            assert resp.json()["checks"] == {"database": "ok", "nats": "ok"}
            schema = await client.get(f"{platform.service_url(name)}/schema/openapi.json")
            assert schema.status_code == 200
            assert schema.json()["info"]["title"] == f"Forge {name} service"
            metrics = await client.get(f"{platform.service_url(name)}/metrics")
            assert "forge_http_requests_total" in metrics.text
        resp = await client.get(f"{platform.service_url('pipeline')}/no/such/route")
        assert resp.status_code == 404
        assert resp.json()["error"]["code"] == "resource_not_found"
