"""`transferlm serve` on tiny random models: mixed batches equal single requests, admin, metrics, config, the command.

Limits and faults (404/422/429/504, disconnects, drain) are in test_serving_limits.py."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path

import httpx
import pytest
import torch

from serving_helpers import TEXTS, classify, make_app, reference, save_serving_tasks, serving
from transferlm.cli import main
from transferlm.config import RunConfig
from transferlm.data.example import Example
from transferlm.errors import ConfigError
from transferlm.protocol.run import run
from transferlm.serving import Registry, ServeConfig, create_app, load_serve_config
from transferlm.serving.hosts import length_chunks
from transferlm.serving.logs import JsonFormatter

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def saved(tiny_bert: Path, tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return save_serving_tasks(tiny_bert, tiny_llama, tmp_path_factory.mktemp("serving"))


# -- the key property -----------------------------------------------------------------------------------


@pytest.mark.parametrize("pad_ratio", [0.0, None])  # one padded pass per host / length-bucketed passes (CPU)
def test_mixed_batch_rows_equal_single_requests(tiny_bert: Path, saved: dict, pad_ratio: float | None) -> None:
    app = make_app(tiny_bert, saved, ("sst", "trec", "nli", "sub"), max_wait_ms=300, max_batch_size=64,
                   pad_ratio=pad_ratio)
    passes: list[list[str]] = []
    for host in {id(e.host): e.host for e in app.state.registry.entries()}.values():
        model = host.model
        inner = model.forward

        def spy(*a, _inner=inner, **kw):
            passes.append(list(kw["tasks"]))
            return _inner(*a, **kw)

        model.forward = spy
    pair = {"sentence1": "a man sleeps", "sentence2": "a person is not awake"}
    requests = [classify("sst", TEXTS[0], TEXTS[1]), classify("trec", TEXTS[2]), classify("sst", TEXTS[3]),
                classify("nli", pair), classify("trec", TEXTS[4], TEXTS[5]), classify("sub", TEXTS[1])]

    async def go():
        async with serving(app) as c:
            mixed = await asyncio.gather(*(c.post("/v1/classify", json=r) for r in requests))
            batches_mixed, mixed_passes = app.state.batcher.batches, passes[:]
            single = [await c.post("/v1/classify", json=r) for r in requests]
            return mixed, batches_mixed, single, mixed_passes

    mixed, batches_mixed, single, mixed_passes = asyncio.run(go())
    assert batches_mixed == 1  # all six requests (four tasks, two base copies) went through one batch
    assert sum(map(len, mixed_passes)) == 8  # every input once
    if pad_ratio == 0:  # one pass per base copy: lora's three tasks together, the adapter task alone
        assert sorted(sorted(set(p)) for p in mixed_passes) == [["nli-v3", "sst-v1", "trec-v2"], ["sub-v4"]]
    else:
        assert any(len(set(p)) > 1 for p in mixed_passes)  # length buckets still mix tasks
    for req, m, s in zip(requests, mixed, single, strict=True):
        assert m.status_code == s.status_code == 200, m.text
        m, s = m.json(), s.json()
        assert m["adapter_version"] == s["adapter_version"] and len(m["results"]) == len(req["inputs"])
        for x, rm, rs in zip(req["inputs"], m["results"], s["results"], strict=True):
            assert rm["label"] == rs["label"] and rm["probabilities"].keys() == rs["probabilities"].keys()
            pm, ps = torch.tensor(list(rm["probabilities"].values())), torch.tensor(list(rs["probabilities"].values()))
            torch.testing.assert_close(pm, ps, atol=1e-5, rtol=1e-4)
            truth = reference(saved, req["task"], *((x["sentence1"], x["sentence2"]) if isinstance(x, dict) else (x,)))
            torch.testing.assert_close(pm, truth, atol=1e-5, rtol=1e-4)
    labels = {r["task"]: len(m.json()["results"][0]["probabilities"]) for r, m in zip(requests, mixed, strict=True)}
    assert labels == {"sst": 2, "trec": 3, "nli": 3, "sub": 2}
    assert mixed[0].json()["results"][0]["label"] in ("c0", "c1")  # label names, not indices


def test_bf16_serving_runs_under_autocast_and_keeps_mixed_equal_to_single(tiny_bert: Path, saved: dict) -> None:
    cfg = ServeConfig(model=str(tiny_bert), tasks={n: str(saved[n]) for n in ("sst", "trec")}, device="cpu",
                      max_wait_ms=300, precision="bf16")
    cfg.validate()
    registry = Registry(cfg.model, device="cpu", pad_ratio=0.0, precision=cfg.precision)
    for n, folder in cfg.tasks.items():
        registry.load(n, folder)
    app = create_app(cfg, registry)
    dtypes: list[torch.dtype | None] = []
    host = registry.get("sst").host
    inner = host.model.forward

    def spy(*a, **kw):
        dtypes.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return inner(*a, **kw)

    host.model.forward = spy
    requests = [classify("sst", TEXTS[0], TEXTS[1]), classify("trec", TEXTS[2]), classify("sst", TEXTS[3])]

    async def go():
        async with serving(app) as c:
            mixed = await asyncio.gather(*(c.post("/v1/classify", json=r) for r in requests))
            single = [await c.post("/v1/classify", json=r) for r in requests]
            return mixed, single, (await c.get("/health")).json()

    mixed, single, health = asyncio.run(go())
    assert dtypes and set(dtypes) == {torch.bfloat16} and health["precision"] == "bf16"
    for req, m, s in zip(requests, mixed, single, strict=True):
        for x, rm, rs in zip(req["inputs"], m.json()["results"], s.json()["results"], strict=True):
            pm, ps = torch.tensor(list(rm["probabilities"].values())), torch.tensor(list(rs["probabilities"].values()))
            torch.testing.assert_close(pm, ps, atol=2e-2, rtol=0)  # bfloat16 rounding, whatever the batch
            with torch.autocast("cpu", dtype=torch.bfloat16):  # the saved model itself, under the same autocast
                truth = reference(saved, req["task"], x).float()
            torch.testing.assert_close(pm, truth, atol=2e-2, rtol=0)
            assert pm.dtype == torch.float32 and abs(float(pm.sum()) - 1) < 1e-5
    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16, got 'fp16'"):
        ServeConfig(model="m", precision="fp16").validate()


def test_length_chunks_bound_padding_and_keep_every_row() -> None:
    lengths = [10, 52, 11, 25, 24, 50, 12]
    chunks = length_chunks(lengths, 1.3)
    assert sorted(i for c in chunks for i in c) == list(range(len(lengths)))
    for c in chunks:
        assert max(lengths[i] for i in c) * len(c) <= 1.3 * sum(lengths[i] for i in c)
    assert [sorted(lengths[i] for i in c) for c in chunks] == [[10, 11, 12], [24, 25], [50, 52]]
    assert length_chunks(lengths, 0) == [list(range(7))] and length_chunks(lengths, None) == [list(range(7))]


def test_batching_modes_and_ia3_in_a_mixed_batch(tiny_bert: Path, saved: dict) -> None:
    texts = TEXTS[:4]

    async def go(mode: str):
        app = make_app(tiny_bert, saved, ("sst", "trec", "ia_a", "ia_b"), batching=mode, max_wait_ms=300)
        reqs = [classify(t, x) for t, x in zip(("sst", "trec", "ia_a", "ia_b"), texts, strict=True)]
        reqs += [classify("sst", TEXTS[5])]
        async with serving(app) as c:
            out = await asyncio.gather(*(c.post("/v1/classify", json=r) for r in reqs))
        tasks_hist = app.state.metrics.registry.get_sample_value
        return [r.json() for r in out], app.state.batcher.batches, tasks_hist("transferlm_batch_tasks_sum")

    results = {mode: go_ for mode in ("mixed", "per-task", "none") for go_ in [asyncio.run(go(mode))]}
    assert results["mixed"][1] == 1 and results["mixed"][2] == 4  # one forward pass, four tasks in it
    assert results["per-task"][1] == 4 and results["per-task"][2] == 4  # sst's two requests together
    assert results["none"][1] == 5
    for mode in ("per-task", "none"):
        for a, b in zip(results["mixed"][0], results[mode][0], strict=True):
            for ra, rb in zip(a["results"], b["results"], strict=True):
                assert ra["probabilities"] == pytest.approx(rb["probabilities"], abs=1e-5)
    ia = results["mixed"][0][2]["results"][0]["probabilities"]
    truth = reference(saved, "ia_a", texts[2])
    assert list(ia.values()) == pytest.approx(truth.tolist(), abs=1e-5)


# -- admin, versions, metrics, logs ------------------------------------------------------------------------


def test_admin_loads_a_task_live_with_versions_and_refuses_a_foreign_adapter(tiny_bert: Path, saved: dict,
                                                                             tmp_path: Path) -> None:
    app = make_app(tiny_bert, saved, ("sst",), admin_token="s3cret")
    auth = {"authorization": "Bearer s3cret"}

    async def go():
        async with serving(app) as c:
            out = {"before": await c.post("/v1/classify", json=classify("trec", "a")),
                   "no_token": await c.post("/v1/tasks", json={"name": "trec", "path": str(saved["trec"])}),
                   "bad_token": await c.post("/v1/tasks", json={"name": "trec", "path": str(saved["trec"])},
                                             headers={"authorization": "Bearer nope"}),
                   "load": await c.post("/v1/tasks", json={"name": "trec", "path": str(saved["trec"])}, headers=auth),
                   "after": await c.post("/v1/classify", json=classify("trec", "a")),
                   "again": await c.post("/v1/tasks", json={"name": "trec", "path": str(saved["trec"])}, headers=auth),
                   "replace": await c.post("/v1/tasks", json={"name": "trec", "path": str(saved["nli"]),
                                                               "replace": True}, headers=auth),
                   "foreign": await c.post("/v1/tasks", json={"name": "llama", "path": str(saved["llama"])},
                                           headers=auth),
                   "missing": await c.post("/v1/tasks", json={"name": "x", "path": str(tmp_path)}, headers=auth),
                   "bad_name": await c.post("/v1/tasks", json={"name": "a b", "path": str(saved["trec"])},
                                            headers=auth),
                   "tasks": await c.get("/v1/tasks")}
            out["pair_now"] = await c.post("/v1/classify", json=classify("trec", {"sentence1": "a",
                                                                                   "sentence2": "b"}))
            return out

    r = asyncio.run(go())
    assert r["before"].status_code == 404
    assert r["no_token"].status_code == 401 and r["bad_token"].status_code == 401
    assert r["load"].status_code == 201 and r["load"].json()["method"] == "lora"
    assert r["after"].status_code == 200 and r["after"].json()["adapter_version"] == r["load"].json()["version"]
    probs = list(r["after"].json()["results"][0]["probabilities"].values())
    assert probs == pytest.approx(reference(saved, "trec", "a").tolist(), abs=1e-5)
    assert r["again"].status_code == 409 and "replace" in r["again"].json()["error"]
    assert r["replace"].status_code == 201 and r["replace"].json()["version"] != r["load"].json()["version"]
    assert r["pair_now"].status_code == 200  # the new version (a pair task) answers under the same name
    assert r["pair_now"].json()["adapter_version"] == r["replace"].json()["version"]
    assert r["foreign"].status_code == 400 and "another base model" in r["foreign"].json()["error"]
    assert "model_type llama vs bert" in r["foreign"].json()["error"]
    assert r["missing"].status_code == 400 and "no method.json" in r["missing"].json()["error"]
    assert r["bad_name"].status_code == 400 and "task name must be" in r["bad_name"].json()["error"]
    names = {t["name"]: t for t in r["tasks"].json()["tasks"]}
    assert set(names) == {"sst", "trec"} and names["trec"]["pair"] is True


def test_admin_without_token_only_on_loopback(tiny_bert: Path, saved: dict) -> None:
    open_app = make_app(tiny_bert, saved, ("sst",), host="0.0.0.0")

    async def go(app):
        async with serving(app) as c:
            return await c.post("/v1/tasks", json={"name": "trec", "path": str(saved["trec"])})

    assert asyncio.run(go(open_app)).status_code == 403
    assert asyncio.run(go(make_app(tiny_bert, saved, ("sst",)))).status_code == 201


def test_metrics_and_structured_logs(tiny_bert: Path, saved: dict, caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(tiny_bert, saved, max_wait_ms=200)

    async def go():
        async with serving(app) as c:
            await asyncio.gather(c.post("/v1/classify", json=classify("sst", "a", "b")),
                                 c.post("/v1/classify", json=classify("trec", "c")))
            await c.post("/v1/classify", json=classify("nope", "c"))
            return await c.get("/metrics"), await c.get("/health"), await c.get("/openapi.json")

    with caplog.at_level(logging.INFO, logger="transferlm.serving"):
        metrics, health, openapi = asyncio.run(go())
    text = metrics.text
    assert metrics.headers["content-type"].startswith("text/plain")
    for line in ('transferlm_requests_total{status="200",task="sst"} 1.0',
                 'transferlm_requests_total{status="200",task="trec"} 1.0',
                 'transferlm_requests_total{status="404",task="_unknown"} 1.0',
                 'transferlm_inputs_total{task="sst"} 2.0', "transferlm_batch_rows_sum 3.0",
                 "transferlm_batch_requests_count 1.0", "transferlm_batch_tasks_sum 2.0",
                 'transferlm_request_latency_seconds_count{task="sst"} 1.0', "transferlm_tasks_loaded 2.0"):
        assert line in text, line
    assert health.json() == {"status": "ok", "tasks": 2, "queued": 0, "running": 0, "batching": "mixed",
                             "retiring": 0, "precision": "fp32"}
    assert "/v1/classify" in openapi.json()["paths"]
    requests = [r for r in caplog.records if getattr(r, "event", None) == "request" and r.path == "/v1/classify"]
    assert sorted((r.status, getattr(r, "task", None)) for r in requests) == [(200, "sst"), (200, "trec"),
                                                                            (404, None)]
    line = json.loads(JsonFormatter().format(requests[0]))
    assert {"ts", "level", "msg", "method", "path", "status", "ms", "request_id"} <= set(line)


# -- prompt-based tasks, config, command line ----------------------------------------------------------------


@pytest.mark.parametrize("peft", [{"name": "lora", "r": 2}, {"name": "prompt-tuning", "length": 3, "init": "random"}])
def test_prompt_finetune_tasks_are_served_with_their_template_and_verbalizer(peft: dict, tiny_mlm: Path,
                                                                             toy_data: Path, tmp_path: Path) -> None:
    runs = {}
    for i, template in enumerate(("{sentence} it was {answer} .", "{sentence} ? {answer} !")):
        cfg = RunConfig.from_dict({
            "task": "toy", "model": str(tiny_mlm), "method": "prompt-finetune", "quiet": True, "seed": 13 + i,
            "output": str(tmp_path / f"p{i}"), "save_model": True, "data": {"data_dir": str(toy_data), "shots": 8},
            "method_args": {"template": template, "label_words": {"0": "bad", "1": "good"},
                            "peft": peft},
            "train": {"max_steps": 3, "learning_rate": 3e-2, "eval_every": 3, "checkpoint_every": 0,
                      "max_length": 48}})
        runs[f"p{i}"] = run(cfg, keep_engine=True).engine
    cfg = ServeConfig(tasks={n: str(tmp_path / n / "model") for n in runs}, device="cpu", max_wait_ms=300)
    registry = Registry(None, device="cpu")  # the base model comes from the runs' results.json
    for n, folder in cfg.tasks.items():
        registry.load(n, folder)
    assert registry.hosts == 1  # both prompt tasks' adapters on one MLM copy
    app = create_app(cfg, registry)
    texts = TEXTS[:3]

    async def go():
        async with serving(app) as c:
            return await asyncio.gather(*(c.post("/v1/classify", json=classify(n, *texts)) for n in runs))

    responses = asyncio.run(go())
    assert app.state.batcher.batches == 1
    for engine, resp in zip(runs.values(), responses, strict=True):
        assert resp.status_code == 200, resp.text
        served = torch.tensor([list(r["probabilities"].values()) for r in resp.json()["results"]])
        _, scores = engine.predict([Example(t, label=0) for t in texts])
        torch.testing.assert_close(served, torch.as_tensor(scores).float(), atol=1e-5, rtol=1e-4)  # softmax
    with pytest.raises(ConfigError, match="train_lm_head"):
        meta = json.loads((tmp_path / "p0" / "model" / "method.json").read_text())
        meta["config"]["peft"]["train_lm_head"] = True
        (tmp_path / "p0" / "model" / "method.json").write_text(json.dumps(meta))
        registry.load("p0b", tmp_path / "p0" / "model")


@pytest.fixture
def _keep_logging():
    """`serve` configures logging for the process (JSON lines); put the test process's back afterwards."""
    names = ("transferlm.serving", "uvicorn", "uvicorn.error", "uvicorn.access")
    saved = {n: (lg.handlers[:], lg.level, lg.propagate) for n in names for lg in [logging.getLogger(n)]}
    yield
    for n, (handlers, level, propagate) in saved.items():
        lg = logging.getLogger(n)
        lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate


@pytest.mark.usefixtures("_keep_logging")
def test_yaml_config_and_command_line_errors(tiny_bert: Path, saved: dict, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "serve.yaml").write_text(f"model: {tiny_bert}\ntasks: {{sst: ../x/sst}}\nmax_batch_size: 8\n")
    cfg = load_serve_config(tmp_path / "serve.yaml", {"port": 9001, "tasks": {"trec": str(saved["trec"])}})
    assert cfg.tasks == {"sst": str(tmp_path.resolve() / "../x/sst"), "trec": str(saved["trec"])}  # YAML-relative
    assert (cfg.max_batch_size, cfg.port, cfg.host, cfg.batching) == (8, 9001, "127.0.0.1", "mixed")
    (tmp_path / "bad.yaml").write_text("max_batch: 8\n")
    shutil.copytree(saved["sst"], tmp_path / "run" / "model")  # a run that recorded another base model
    (tmp_path / "run" / "results.json").write_text(json.dumps({"config": {"model": str(tmp_path / "other")}}))
    cases = [(["serve", "--config", str(tmp_path / "bad.yaml")], "unknown key(s) max_batch"),
             (["serve", "--model", str(tiny_bert), "--task", f"x={tmp_path}"], "no method.json"),
             (["serve", "--task", f"x={saved['llama']}", "--model", str(tiny_bert)], "another base model"),
             (["serve", "--task", "nofolder"], "NAME=FOLDER"),
             (["serve", "--model", str(tiny_bert), "--task", f"x={tmp_path / 'run' / 'model'}"],
              f"was trained on base model '{tmp_path / 'other'}'"),
             (["serve", "--model", str(tiny_bert), "--max-queue", "0"], "max_queue must be >= 1"),
             (["serve", "--model", str(tiny_bert), "--header-timeout", "0"], "header_timeout_s must be > 0, got 0"),
             (["serve"], "nothing to serve")]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        ours = [line for line in err.splitlines() if line.startswith("transferlm:")]  # not progress bars
        assert "Traceback" not in err and len(ours) == 1 and message in ours[0], (argv, err)
        assert ours[0].startswith("transferlm: error:")


@pytest.mark.slow  # a real server process: ~10-25 s of imports and loading on a shared 2-core machine
def test_the_command_serves_over_http_and_drains_on_sigterm(tiny_bert: Path, saved: dict) -> None:
    import signal
    import socket
    import subprocess
    import sys
    import time
    from concurrent.futures import ThreadPoolExecutor

    from helpers import cli_env

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "transferlm", "serve", "--model", str(tiny_bert), "--port",
                             str(port), "--task", f"sst={saved['sst']}", "--task", f"trec={saved['trec']}",
                             "--max-wait-ms", "3000", "--max-batch-size", "8", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(400):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        else:
            raise AssertionError("server did not start")
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(httpx.post, f"{url}/v1/classify", json=classify(t, "good movie"), timeout=30)
                       for t in ("sst", "trec", "sst", "trec")]
            for _ in range(400):  # until all four wait in the batcher (max_wait 3 s) ...
                health = httpx.get(f"{url}/health", timeout=5).json()
                if health["queued"] + health["running"] == 4:
                    break
                time.sleep(0.01)
            assert health["queued"] + health["running"] == 4, health
            # ... then the signal lands
            proc.send_signal(signal.SIGTERM)
            answers = [f.result() for f in futures]
        assert [r.status_code for r in answers] == [200] * 4
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    # uvicorn re-raises the signal once it has shut down gracefully, so the parent sees "terminated by SIGTERM".
    assert proc.returncode in (0, -signal.SIGTERM)
    logs = [json.loads(line) for line in err.splitlines() if line.startswith('{"ts"')]
    events = [x.get("event") for x in logs]
    assert "start" in events and "drain_done" in events and events.count("request") >= 5
    assert {x["status"] for x in logs if x.get("event") == "request" and x["path"] == "/v1/classify"} == {200}
