"""`--backend auto --precision auto` (vitserve/runtimes/choose.py): every runtime and precision that can run the
artifact is loaded, proof-checked and timed here, and the fastest that passes serves. Which one wins depends on the
machine; what is held here is that the choice is the one its own figures say, and that a runtime failing the proof
is never chosen."""

from __future__ import annotations

import torch
from fastapi.testclient import TestClient

from tests.conftest import ROOT, run_cli_here
from vitserve.machine import time_interleaved
from vitserve.runtimes.choose import ROUNDS, candidates, choose
from vitserve.runtimes.openvino import cpu_supports_bf16
from vitserve.server.app import create_app
from vitserve.server.settings import Settings


def test_candidates_are_every_runtime_and_precision_for_the_model_file(digits_artifact):
    assert candidates(digits_artifact) == [("onnxruntime", "f32"), ("openvino", "f32"), ("openvino", "bf16")]


def test_the_fastest_that_passes_its_proof_is_chosen(digits_artifact):
    runtime, choice = choose(digits_artifact)
    rows = choice["candidates"]
    assert [(r["backend"], r["precision"]) for r in rows] == candidates(digits_artifact)
    timed = [r for r in rows if "ms" in r]
    assert all(r["proof"] == "passed" for r in timed)
    bf16 = rows[2]
    if cpu_supports_bf16():
        assert len(timed) == 3
    else:  # left out, with OpenVINO's reason
        assert len(timed) == 2 and "AVX512_BF16 or AMX" in bf16["left_out"]
    fastest = min(timed, key=lambda r: r["ms"])
    assert runtime.description == choice["chosen"] == fastest["description"]
    assert choice["why"].startswith(f"the fastest of {len(timed)} runtimes that ran the artifact and passed its proof "
                                    f"here: {fastest['ms']:.1f} ms per batch of 8 (median of {ROUNDS} interleaved")
    assert choice["proof"]["passed"] and choice["proof"]["runtime"] == runtime.description
    assert runtime(torch.zeros(2, 3, 32, 32).numpy()).shape == (2, 10)


def test_timing_interleaves_and_measures_each_runner():
    calls = []

    def runner(name, seconds):
        def run(x):
            calls.append(name)
            import time
            time.sleep(seconds)
        return run

    runners = [runner("a", 0.01), runner("b", 0.001), runner("c", 0.005)]
    times = time_interleaved(runners, torch.zeros(1).numpy(), rounds=3)
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]  # warm-up
    assert calls[6:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # the order rotates every round
    assert all(len(t) == 3 for t in times)
    assert min(times[0]) >= 0.01 and max(times[1]) < min(times[0])


def test_a_runtime_that_fails_its_proof_is_never_chosen(drifting_artifact):
    runtime, choice = choose(drifting_artifact)
    rows = {(r["backend"], r["precision"]): r for r in choice["candidates"]}
    for key in (("onnxruntime", "f32"), ("openvino", "f32")):  # held to fp32's atol
        assert rows[key]["proof"] == "failed" and "max |logit difference|" in rows[key]["left_out"]
    if cpu_supports_bf16():  # held to bf16's cosine gate, which the small drift passes: the only one left
        assert runtime.description == "openvino CPU bf16" and choice["proof"]["passed"]
        assert choice["why"] == "the only one of the runtimes here that ran the artifact and passed its proof"
    else:  # none passes: the runtime it was exported for, with its failing proof, which the server refuses
        assert runtime.name == "onnxruntime" and not choice["proof"]["passed"]
        assert choice["why"] == "no runtime passed the artifact's proof here"
    with TestClient(create_app(Settings(artifact=drifting_artifact))) as client:
        ready = client.get("/readyz")
        if cpu_supports_bf16():
            assert ready.status_code == 200 and ready.json()["backend"] == "openvino CPU bf16"
            assert ready.json()["backend_choice"] == choice["why"]
        else:
            assert ready.status_code == 503 and ready.json()["status"] == "refused"


def test_an_explicit_backend_is_not_chosen_for(digits_artifact):
    with TestClient(create_app(Settings(artifact=digits_artifact, backend="openvino"))) as client:
        ready = client.get("/readyz").json()
        assert ready["backend"].startswith("openvino CPU") and "backend_choice" not in ready


def test_classify_says_which_backend_it_chose_and_refuses_a_failing_proof(digits_artifact, drifting_artifact):
    result = run_cli_here("classify", str(digits_artifact), str(ROOT / "examples" / "digit_3.png"), "--top-k", "1")
    assert result.returncode == 0, result.stderr
    assert "backend: " in result.stderr and "passed its proof here" in result.stderr
    assert " 3 (3)" in result.stdout
    result = run_cli_here("classify", str(drifting_artifact), str(ROOT / "examples" / "digit_3.png"), "--backend",
                          "onnxruntime")
    assert result.returncode == 1 and "does not give the fp32 model's answers" in result.stderr
