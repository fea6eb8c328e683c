"""Several models and versions in one server: the repository layout, version policies, routing by model and version,
the V2 repository extension, polling, and unloads that wait for the requests already routed (in process here; under
load against a real server with tritonclient in test_repository_live.py)."""

from __future__ import annotations

import asyncio
import gc
import shutil
import weakref

import pytest
from fastapi.testclient import TestClient

from tests.conftest import ROOT
from vitserve.errors import VitServeError
from vitserve.server.app import create_app
from vitserve.server.repository import VersionPolicy, find_models
from vitserve.server.settings import Settings

DIGIT = {d: (ROOT / "examples" / f"digit_{d}.png").read_bytes() for d in (3, 7)}


def make_repository(digits_artifact, root, layout: dict[str, list[int] | None]):
    """root/NAME/ (an artifact) for None, root/NAME/V/ (artifacts) for a list of versions: copies of the digits
    artifact."""
    for name, versions in layout.items():
        if versions is None:
            shutil.copytree(digits_artifact, root / name)
        for version in versions or ():
            shutil.copytree(digits_artifact, root / name / str(version))
    return root


@pytest.mark.parametrize("text,available,expected", [
    ("latest:1", [1, 2, 3], [3]),
    ("latest:2", [3, 1, 2], [2, 3]),
    ("latest:5", [1, 2], [1, 2]),
    ("all", [2, 1, 10], [1, 2, 10]),
    ("specific:1,3", [1, 2, 3], [1, 3]),
    ("specific:4", [1, 2, 3], []),
])
def test_version_policy(text, available, expected):
    policy = VersionPolicy.parse(text)
    assert policy.select(available) == expected and str(VersionPolicy.parse(str(policy))) == str(policy)


@pytest.mark.parametrize("text", ["latest:0", "latest:x", "newest", "specific:", "specific:0", "all:2", ""])
def test_bad_version_policies_are_clear_errors(text):
    with pytest.raises(VitServeError, match="invalid version policy"):
        VersionPolicy.parse(text)


def test_find_models(digits_artifact, tmp_path):
    repo = make_repository(digits_artifact, tmp_path / "repo", {"plain": None, "versioned": [1, 2, 10]})
    (repo / "versioned" / "notes").mkdir()  # neither a number nor an artifact: ignored
    (repo / "versioned" / "3").mkdir()  # a version still being copied (no manifest yet): not a version yet
    (repo / "empty").mkdir()  # holds nothing: skipped with a warning
    (repo / "pinned").mkdir()
    shutil.copytree(digits_artifact, repo / "pinned" / "4")
    (repo / "pinned" / "vitserve.yaml").write_text("version_policy: specific:4\n")
    found = find_models([repo, digits_artifact], VersionPolicy.parse("latest:1"))
    assert sorted(found) == ["pinned", "plain", "swin_digits", "versioned"]  # the artifact by its manifest's name
    assert sorted(found["versioned"].versions()) == [1, 2, 10] and list(found["plain"].versions()) == [1]
    assert str(found["pinned"].policy) == "specific:4" and str(found["plain"].policy) == "latest:1"

    with pytest.raises(VitServeError, match="two models are named 'swin_digits'"):
        find_models([digits_artifact, digits_artifact], VersionPolicy.parse("all"))
    with pytest.raises(VitServeError, match="is not a directory"):
        find_models([tmp_path / "nope"], VersionPolicy.parse("all"))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(VitServeError, match="no models in"):
        find_models([tmp_path / "nothing"], VersionPolicy.parse("all"))
    (repo / "pinned" / "vitserve.yaml").write_text("versions: all\n")
    with pytest.raises(VitServeError, match="only `version_policy"):
        find_models([repo], VersionPolicy.parse("all"))


@pytest.fixture
def two_models(digits_artifact, tmp_path):
    """The digits artifact itself, and a repository with `digits` at versions 1 and 2 (policy all)."""
    repo = make_repository(digits_artifact, tmp_path / "repo", {"digits": [1, 2]})
    settings = Settings(artifact=[digits_artifact, repo], backend="onnxruntime", version_policy="all",
                        max_batch_size=4)
    with TestClient(create_app(settings)) as client:
        yield client, repo


def _classify(client, **params):
    return client.post("/classify", params=params, files={"file": ("3.png", DIGIT[3], "image/png")})


def test_routing_by_model_and_version(two_models):
    client, _ = two_models
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and "model" not in ready  # several: listed, none at the top level
    assert [(m["name"], m["version"]) for m in ready["models"]] == [("digits", 1), ("digits", 2),
                                                                   ("swin_digits", 1)]
    missing = _classify(client)
    assert missing.status_code == 400 and "several models (digits, swin_digits)" in missing.json()["error"]
    for params, served in [({"model": "swin_digits"}, ("swin_digits", 1)), ({"model": "digits"}, ("digits", 2)),
                           ({"model": "digits", "version": "1"}, ("digits", 1))]:
        answer = _classify(client, **params).json()
        assert (answer["model"], answer["version"]) == served
        assert answer["results"][0]["predictions"][0]["label"] == "3"
    for params, message in [({"model": "resnet"}, "unknown model 'resnet'"),
                            ({"model": "digits", "version": "3"}, "no version '3' loaded; loaded: 1, 2"),
                            ({"model": "digits", "version": "one"}, "no version 'one'")]:
        answer = _classify(client, **params)
        assert answer.status_code == 404 and message in answer.json()["error"]

    meta = client.get("/v2/models/digits").json()
    assert meta["name"] == "digits" and meta["versions"] == ["1", "2"]
    body = {"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "data": [
        __import__("base64").b64encode(DIGIT[7]).decode()]}], "outputs": [{"name": "logits", "parameters": {
            "classification": 1}}]}
    for path, version in [("/v2/models/digits/infer", "2"), ("/v2/models/digits/versions/1/infer", "1")]:
        answer = client.post(path, json=body).json()
        assert answer["model_name"] == "digits" and answer["model_version"] == version
        assert answer["outputs"][0]["data"][0].endswith(":7")
    assert client.get("/v2/models/digits/versions/1/ready").json() == {"name": "digits", "version": "1",
                                                                     "ready": True}
    metrics = client.get("/metrics").text
    assert 'vitserve_batch_size_count{model="digits",version="1"}' in metrics
    assert 'vitserve_batch_size_count{model="digits",version="2"}' in metrics
    assert 'model="digits",route="/v2/models/{name}/versions/{version}/infer",status="200",version="1"' in metrics


def test_repository_index_unload_and_load(two_models):
    client, repo = two_models
    index = client.post("/v2/repository/index").json()
    assert [(r["name"], r["version"], r["state"]) for r in index] == [
        ("digits", "1", "READY"), ("digits", "2", "READY"), ("swin_digits", "1", "READY")]
    repository = client.app.state.repository
    runtime = weakref.ref(repository.services["digits"][1].backend)

    assert client.post("/v2/repository/models/digits/unload").status_code == 200
    gc.collect()
    assert runtime() is None  # the unloaded versions' runtimes are gone: their memory is back
    assert _classify(client, model="digits").status_code == 404
    assert "is not loaded" in _classify(client, model="digits").json()["error"]
    assert client.get("/readyz").status_code == 200  # an unloaded model is not waited for
    index = client.post("/v2/repository/index", json={"ready": False}).json()
    assert {"name": "digits", "version": "", "state": "UNAVAILABLE", "reason": "unloaded"} in index
    assert [r["name"] for r in client.post("/v2/repository/index", json={"ready": True}).json()] == ["swin_digits"]
    assert 'model="digits"' not in client.get("/metrics").text.split("vitserve_requests_total")[0]

    assert client.post("/v2/repository/models/digits/load").status_code == 200
    assert _classify(client, model="digits").json()["version"] == 2
    unknown = client.post("/v2/repository/models/nope/load")
    assert unknown.status_code == 404 and "no model 'nope'" in unknown.json()["error"]
    assert client.post("/v2/repository/models/nope/unload").status_code == 404


def test_load_picks_up_a_new_version_and_retires_the_old(digits_artifact, tmp_path):
    """latest:1: a new version folder, once loaded (load_model, or --poll-s), serves requests without a version;
    the old one leaves. A version that fails to load leaves the one serving in place, with the reason indexed."""
    repo = make_repository(digits_artifact, tmp_path / "repo", {"digits": [1]})
    with TestClient(create_app(Settings(artifact=[repo], backend="onnxruntime", max_batch_size=4))) as client:
        assert _classify(client).json()["version"] == 1  # the only model is the default
        shutil.copytree(digits_artifact, repo / "digits" / "2")
        assert client.post("/v2/repository/models/digits/load").status_code == 200
        assert _classify(client).json()["version"] == 2
        assert [r["version"] for r in client.post("/v2/repository/index", json={"ready": True}).json()] == ["2"]
        shutil.copytree(digits_artifact, repo / "digits" / "3")
        (repo / "digits" / "3" / "model.onnx").write_bytes(b"broken")
        failed = client.post("/v2/repository/models/digits/load")
        assert failed.status_code == 400 and "version 3" in failed.json()["error"]
        assert _classify(client).json()["version"] == 2  # still serving
        index = {r["version"]: r for r in client.post("/v2/repository/index").json()}
        assert index["3"]["state"] == "UNAVAILABLE" and "bytes where its export wrote" in index["3"]["reason"]
        assert index["1"]["reason"] == "not in the version policy latest:1"

        shutil.rmtree(repo / "digits" / "3")
        shutil.copytree(digits_artifact, repo / "digits" / "4")
        client.portal.call(client.app.state.repository.poll)  # what --poll-s runs
        assert _classify(client).json()["version"] == 4 and list(client.app.state.repository.services["digits"]) == [4]


def test_an_unload_waits_for_the_requests_routed_to_it(two_models):
    """A request routed to a version before its unload is answered by it; the unload returns after that."""
    client, _ = two_models
    repository = client.app.state.repository
    service = repository.services["digits"][2]
    order = []

    async def scenario():
        with service.serving():  # a request routed here, still being read
            unload = asyncio.create_task(repository.unload("digits"))
            for _ in range(200):  # version 1 goes first, then this one is taken out of service
                if not service.ready:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            assert not unload.done() and not service.ready  # out of service for new requests, not yet gone
            order.append("answered")
        await unload
        order.append("unloaded")

    client.portal.call(scenario)
    assert order == ["answered", "unloaded"]
    assert "digits" not in repository.services


def test_serve_flags_and_environment(digits_artifact, monkeypatch):
    monkeypatch.setenv("VITSERVE_ARTIFACT", f"{digits_artifact}, {digits_artifact.parent}")
    assert Settings().artifact == [digits_artifact, digits_artifact.parent]
    with pytest.raises(ValueError, match="at least one"):
        Settings(artifact=[])
    with pytest.raises(VitServeError, match="invalid version policy"):
        with TestClient(create_app(Settings(artifact=[digits_artifact], version_policy="newest"))):
            pass


def test_decode_on_device_needs_the_torch_runtime(digits_artifact):
    from vitserve.errors import ArtifactError

    with pytest.raises(ArtifactError, match="--decode device needs the torch runtime"):
        with TestClient(create_app(Settings(artifact=[digits_artifact], backend="onnxruntime", decode="device"))):
            pass


def test_the_repository_routes_need_the_api_key(digits_artifact):
    from pydantic import SecretStr

    settings = Settings(artifact=[digits_artifact], backend="onnxruntime", api_key=SecretStr("k"))
    with TestClient(create_app(settings)) as client:
        for path in ("/v2/repository/index", "/v2/repository/models/swin_digits/unload",
                     "/v2/repository/models/swin_digits/load"):
            refused = client.post(path)
            assert refused.status_code == 401 and "API key" in refused.json()["error"]
        assert client.post("/v2/repository/index", headers={"X-API-Key": "k"}).json()[0]["state"] == "READY"
        assert client.get("/readyz").status_code == 200  # still loaded: the refused unload did nothing
