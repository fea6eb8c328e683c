"""A real `vitserve serve REPOSITORY` process: the V2 repository extension through unmodified tritonclient (HTTP and
gRPC), and a version switch (picked up by --poll-s) and an unload under load, with nothing lost."""

from __future__ import annotations

import io
import shutil
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.live_server import Server, free_port
from tests.server.test_repository import DIGIT, make_repository

# A large photograph-sized image: decoding it takes a while, so that many requests are between being routed to a
# version and reaching its batcher when that version leaves (the moment an unload that did not wait would drop them)
LARGE = io.BytesIO()
Image.open(io.BytesIO(DIGIT[3])).convert("RGB").resize((1200, 1200)).save(LARGE, "PNG")

pytestmark = pytest.mark.slow  # a live server under load


@pytest.fixture
def served(digits_artifact, tmp_path):
    repo = make_repository(digits_artifact, tmp_path / "repo", {"digits": [1], "other": None})
    grpc_port = free_port()
    server = Server(repo, "--max-batch-size", "1", "--threads", "1", "--backend", "onnxruntime", "--poll-s", "0.3",
                    "--grpc-port", str(grpc_port), "--timeout-ms", "60000")
    server.wait_ready()
    yield server, repo, grpc_port
    assert server.stop() in (0, -15), server.output()


class Load:
    """Threads posting /classify?model=MODEL until stopped: each answer with the moments it was sent and answered."""

    def __init__(self, url: str, model: str, threads: int = 6):
        self.url, self.model, self.answers, self.stopping = url, model, [], threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self.stopping.is_set():
                sent = time.monotonic()
                try:
                    r = client.post(f"{self.url}/classify", params={"model": self.model},
                                    files={"file": ("3.png", LARGE.getvalue(), "image/png")})
                    answer = (r.status_code, r.json())
                except httpx.HTTPError as e:  # a lost request: a dropped connection, no answer
                    answer = (0, {"error": repr(e)})
                self.answers.append((sent, time.monotonic(), *answer))

    def stop(self) -> list:
        self.stopping.set()
        for t in self.threads:
            t.join(90)
        return self.answers


def test_tritonclient_repository_extension(served):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    server, _, grpc_port = served
    http = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    index = http.get_model_repository_index()
    assert [(m["name"], m["version"], m["state"]) for m in index] == [("digits", "1", "READY"),
                                                                    ("other", "1", "READY")]
    assert [(m.name, m.state) for m in grpc.get_model_repository_index().models] == [("digits", "READY"),
                                                                                     ("other", "READY")]
    http.unload_model("other")
    assert not http.is_model_ready("other") and http.is_model_ready("digits")
    assert {"name": "other", "version": "", "state": "UNAVAILABLE", "reason": "unloaded"} in \
        http.get_model_repository_index()
    grpc.load_model("other")
    assert grpc.is_model_ready("other")
    grpc.unload_model("other")
    assert not grpc.is_model_ready("other")
    http.load_model("other")
    x = np.array([DIGIT[7]], dtype=np.object_)
    tensor = httpclient.InferInput("images", [1], "BYTES")
    tensor.set_data_from_numpy(x)
    answer = http.infer("other", [tensor], outputs=[httpclient.InferRequestedOutput("logits", class_count=1)])
    assert answer.as_numpy("logits")[0][0].decode().endswith(":7")
    assert answer.get_response()["model_version"] == "1"
    with pytest.raises(InferenceServerException, match="no model 'resnet'"):
        http.load_model("resnet")
    with pytest.raises(InferenceServerException, match="takes no parameters"):
        http.load_model("other", config='{"max_batch_size": 8}')


def test_version_switch_and_unload_under_load_lose_nothing(served, digits_artifact):
    """A new version folder (--poll-s picks it up) takes the requests that arrive after it is in; the ones routed to
    the old version finish there. An unload under load: requests already routed are answered, the later ones are
    told the model is not loaded. Nothing is dropped, failed or timed out."""
    server, repo, _ = served
    load = Load(server.url, "digits")
    time.sleep(1.0)
    shutil.copytree(digits_artifact, repo / "digits" / "2.partial")
    (repo / "digits" / "2.partial").rename(repo / "digits" / "2")  # appears whole, as a deployment tool would do
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        index = httpx.post(f"{server.url}/v2/repository/index", json={"ready": True}).json()
        if [(r["name"], r["version"]) for r in index if r["name"] == "digits"] == [("digits", "2")]:
            break
        time.sleep(0.05)
    switched = time.monotonic()
    time.sleep(1.0)
    answers = load.stop()
    assert switched < deadline, server.output()
    assert {status for *_, status, _ in answers} == {200}, [a for a in answers if a[2] != 200][:3]
    versions = [(sent, body["version"]) for sent, _, _, body in answers]
    assert {v for _, v in versions} == {1, 2}  # both served during the run
    assert all(v == 2 for sent, v in versions if sent > switched)  # after the switch, the new version only
    assert "digits version 1 unloaded" in server.output()

    load = Load(server.url, "other")
    time.sleep(1.0)
    started = time.monotonic()
    assert httpx.post(f"{server.url}/v2/repository/models/other/unload", timeout=60).status_code == 200
    unloaded = time.monotonic()
    time.sleep(0.5)
    answers = load.stop()
    statuses = {status for *_, status, _ in answers}
    assert statuses == {200, 404}, [a for a in answers if a[2] not in (200, 404)][:3]
    assert all("is not loaded" in body["error"] for *_, status, body in answers if status == 404)
    assert all(sent < unloaded for sent, _, status, _ in answers if status == 200)
    assert any(done > started for _, done, status, _ in answers if status == 200), "no request was in flight"
