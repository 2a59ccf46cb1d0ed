from tests.support import dcmtk
from tests.support.server import PacsServer


def test_c_echo_succeeds(server: PacsServer) -> None:
    result = dcmtk.echoscu(server.dimse_port)
    assert result.returncode == 0, result.stderr


def test_health_answers_200_once_listening(server: PacsServer) -> None:
    import httpx

    response = httpx.get(f"{server.base_url}/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
