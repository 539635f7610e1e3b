"""`transferlm serve` admin loads: a task folder is read beside the forward passes, not in front of them."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from serving_helpers import classify, make_app, reference, save_serving_tasks, serving, until
from transferlm.methods.efficient import tasks as efficient_tasks

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.usefixtures("one_thread")]
PAIR = {"sentence1": "a man plays", "sentence2": "someone plays music"}


@pytest.fixture(scope="module")
def saved(tiny_bert: Path, tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return save_serving_tasks(tiny_bert, tiny_llama, tmp_path_factory.mktemp("serve_admin"))


class SlowReads:
    """Holds every safetensors read of a task head under ``folder`` until ``release`` is set; counts the reads."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
        self.folder, self.release, self.reading = folder, threading.Event(), 0
        real = efficient_tasks.load_file

        def held(path, *args, **kwargs):
            if Path(path).parent == self.folder:
                self.reading += 1
                self.release.wait(20)
            return real(path, *args, **kwargs)

        monkeypatch.setattr(efficient_tasks, "load_file", held)


@pytest.mark.parametrize("task", ["nli", "sub"])  # on the served LoRA base copy; a new base copy (adapter method)
def test_classify_is_answered_while_an_admin_load_reads_its_files(tiny_bert: Path, saved: dict, task: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app(tiny_bert, saved, ("sst",))
    slow = SlowReads(monkeypatch, saved[task])
    text = PAIR if task == "nli" else "good movie"

    async def go():
        async with serving(app) as c:
            load = asyncio.ensure_future(c.post("/v1/tasks", json={"name": "new", "path": str(saved[task])}))
            await until(lambda: slow.reading == 1)
            try:
                # Before, the load held the inference thread: this waited for the whole load (here, forever).
                during = await asyncio.wait_for(c.post("/v1/classify", json=classify("sst", "good movie")), 10)
                load_was_done = load.done()
                unknown_yet = await c.post("/v1/classify", json=classify("new", text))
            finally:
                slow.release.set()
            return during, load_was_done, unknown_yet, await load, await c.post("/v1/classify",
                                                                                json=classify("new", text))

    during, load_was_done, unknown_yet, loaded, after = asyncio.run(go())
    assert during.status_code == 200 and not load_was_done
    probs = list(during.json()["results"][0]["probabilities"].values())
    assert probs == pytest.approx(reference(saved, "sst", "good movie").tolist(), abs=1e-5)
    assert unknown_yet.status_code == 404  # nothing is registered until the load commits
    assert loaded.status_code == 201 and after.status_code == 200
    assert after.json()["adapter_version"] == loaded.json()["version"]
    probs = list(after.json()["results"][0]["probabilities"].values())
    args = (PAIR["sentence1"], PAIR["sentence2"]) if task == "nli" else (text,)
    assert probs == pytest.approx(reference(saved, task, *args).tolist(), abs=1e-5)


def test_two_admin_loads_of_one_name_in_flight_together_give_one_task_and_one_409(
        tiny_bert: Path, saved: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app(tiny_bert, saved, ("sst",))
    registry = app.state.registry
    slow = SlowReads(monkeypatch, saved["trec"])

    async def go():
        async with serving(app) as c:
            body = {"name": "trec", "path": str(saved["trec"])}
            loads = [asyncio.ensure_future(c.post("/v1/tasks", json=body)) for _ in range(2)]
            await until(lambda: slow.reading == 2)  # both passed the name check and read their files together
            slow.release.set()
            answers = await asyncio.gather(*loads)
            return answers, await c.post("/v1/classify", json=classify("trec", "a"))

    answers, after = asyncio.run(go())
    assert sorted(r.status_code for r in answers) == [201, 409]
    refused = next(r for r in answers if r.status_code == 409)
    assert "already loaded" in refused.json()["error"] and "replace" in refused.json()["error"]
    loaded = next(r for r in answers if r.status_code == 201).json()
    assert after.status_code == 200 and after.json()["adapter_version"] == loaded["version"]
    entry = registry.get("trec")
    # The refused load left nothing on the shared host: only sst's and trec's adapters, and nothing retiring.
    assert sorted(entry.host.adapters) == sorted([registry.get("sst").adapter, entry.adapter])
    assert registry.retiring == [] and len(registry) == 2
