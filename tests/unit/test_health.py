from tests.conftest import Cloud


def test_health_needs_no_key(cloud: Cloud) -> None:
    r = cloud.http(key=False).get("/v1/health")  # type: ignore[arg-type]
    assert r.status_code == 200
    assert r.json()["status"] == "ok"


def test_whoami_needs_a_key(cloud: Cloud) -> None:
    r = cloud.http(key=False).get("/v1/whoami")  # type: ignore[arg-type]
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"


def test_wrong_key_is_401(cloud: Cloud) -> None:
    for bad in ["gk_nope_nope", "garbage", cloud.admin_key + "x"]:
        r = cloud.http(bad).get("/v1/whoami")
        assert r.status_code == 401, bad
        assert "error" in r.json()


def test_whoami_with_bootstrap_key(cloud: Cloud) -> None:
    me = cloud.client().whoami()
    assert me["user"] == "admin" and me["workspace"] == "default" and me["role"] == "owner"


def test_unknown_route_has_error_shape(cloud: Cloud) -> None:
    r = cloud.http().get("/v1/does-not-exist")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


def test_ready_reports_database_and_artifacts(cloud: Cloud) -> None:
    # Not started (no lifespan): this app is in no election, so it does not lead.
    ready = {"database": True, "artifacts": True, "leader": False, "leader_epoch": None}
    assert cloud.client().ready() == ready
