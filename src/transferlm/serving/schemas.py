"""The HTTP API's request and response bodies (pydantic; they make the OpenAPI schema at /docs)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictStr


class PairInput(BaseModel):
    """A sentence pair, for pair tasks (MNLI, MRPC, ...)."""

    model_config = ConfigDict(extra="forbid")
    sentence1: StrictStr
    sentence2: StrictStr


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"task": "sst2", "inputs": ["a gripping, funny film", "flat and tedious"]},
                     {"task": "mnli", "inputs": [{"sentence1": "A man sleeps.", "sentence2": "A person rests."}]}]})
    task: StrictStr = Field(min_length=1, max_length=64, description="a loaded task (GET /v1/tasks)")
    inputs: list[StrictStr | PairInput] = Field(min_length=1, description="texts, or sentence pairs for pair tasks")


class Result(BaseModel):
    label: str | None = Field(None, description="the most probable label (classification)")
    probabilities: dict[str, float] | None = Field(None, description="label -> probability (classification)")
    score: float | None = Field(None, description="the predicted value (regression tasks)")


class ClassifyResponse(BaseModel):
    task: str
    adapter_version: str = Field(description="content hash of the adapter that answered")
    results: list[Result]


class TaskInfo(BaseModel):
    name: str
    version: str
    method: str
    kind: str = Field(description="classifier (adapter + head) or prompt (template + verbalizer)")
    labels: list[str]
    regression: bool
    pair: bool
    max_length: int
    folder: str
    loaded_at: str


class TaskList(BaseModel):
    model: str | None
    batching: str
    tasks: list[TaskInfo]


class LoadTaskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StrictStr = Field(min_length=1, max_length=64)
    path: StrictStr = Field(min_length=1, description="a run's saved model folder on the server's disk")
    replace: bool = Field(False, description="load a new version of a task already being served")
    allow_base_mismatch: bool | None = Field(None, description="load it even if its run used another base model "
                                             "(default: the server's --allow-base-mismatch)")


class ErrorBody(BaseModel):
    error: str


UNION_TAGS = {"str", "PairInput"}  # pydantic names the union member in an error's location; users need not
