"""The README (the user's manual) against the code, without loading a model or reading data.

Every ``transferlm ...`` command in the README's code blocks must parse with the CLI's own argparse parser and
resolve to a valid config (unknown ``--set`` keys, method options and grid keys are errors there); every
``transferlm`` command quoted inline must name an existing command and only its flags; every YAML block must load
through the config loader (unknown keys are errors); the Python blocks' imports and the dotted API names the
prose quotes must exist; the ``curl`` bodies must match the server's request schema. The examples in each
command's ``--help`` are checked the same way. A renamed or removed flag, key or export fails here.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from transferlm import cli
from transferlm.config import RunConfig

README = Path(__file__).resolve().parents[1] / "README.md"
SEPARATORS = {"&&", "||", ";", "|"}


@dataclass
class Block:
    lang: str
    body: str
    line: int  # the README line of the block's first body line


@dataclass
class Command:
    argv: list[str]
    where: str  # "README.md:LINE" or "transferlm CMD --help"

    def __str__(self) -> str:
        return f"{self.where}: transferlm {shlex.join(self.argv)}"


def fenced_blocks(text: str) -> list[Block]:
    blocks, lang, body, start = [], None, [], 0
    for i, line in enumerate(text.splitlines(), start=1):
        fence = re.match(r"^\s*```(\w*)", line)
        if fence and lang is None:
            lang, body, start = fence.group(1) or "text", [], i + 1
        elif fence:
            blocks.append(Block(lang, "\n".join(body), start))
            lang = None
        elif lang is not None:
            body.append(line)
    assert lang is None, "README.md: a code block is not closed"
    return blocks


def logical_lines(body: str, first_line: int) -> list[tuple[int, str]]:
    """Lines with their backslash continuations joined, each with the README line it starts on."""
    out: list[tuple[int, str]] = []
    pending, start = "", first_line
    for i, line in enumerate(body.splitlines(), start=first_line):
        if not pending:
            start = i
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    if pending:
        out.append((start, pending))
    return out


def transferlm_argv(tokens: list[str]) -> list[str] | None:
    """The arguments after ``transferlm`` (a path to it, or ``-m transferlm``) in one shell command, else None."""
    while tokens and re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[0]):  # VAR=value prefixes
        tokens = tokens[1:]
    for i, tok in enumerate(tokens):
        if i == 0 and Path(tok).name == "transferlm":
            return tokens[1:]
        if tok == "-m" and i + 1 < len(tokens) and tokens[i + 1] == "transferlm":
            return tokens[i + 2:]
    return None


def shell_commands(text: str, first_line: int, where: str | None = None) -> list[Command]:
    commands = []
    for line_no, line in logical_lines(text, first_line):
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as e:  # an unbalanced quote: worth failing on in a line a user copies
            pytest.fail(f"README.md:{line_no}: not a valid shell line ({e}): {line}")
        segment: list[str] = []
        for tok in [*tokens, ";"]:
            if tok in SEPARATORS:
                argv = transferlm_argv(segment)
                if argv is not None:
                    commands.append(Command(argv, where or f"README.md:{line_no}"))
                segment = []
            else:
                segment.append(tok)
    return commands


def readme_commands() -> list[Command]:
    out = []
    for b in fenced_blocks(README.read_text(encoding="utf-8")):
        if b.lang in ("bash", "sh", "shell", "console"):
            out += shell_commands(b.body, b.line)
    return out


def help_commands() -> list[Command]:
    """The examples in every command's ``--help`` (its epilog)."""
    out = []
    for name, sub in subcommands().items():
        parsers = {name: sub}
        parsers.update({f"{name} {k}": v for k, v in subcommands(sub).items()})
        for label, p in parsers.items():
            for c in shell_commands(p.epilog or "", 1, where=f"transferlm {label} --help"):
                if c.argv and c.argv[0] != "--help":
                    out.append(c)
    return out


def subcommands(parser: argparse.ArgumentParser | None = None) -> dict[str, argparse.ArgumentParser]:
    parser = parser or cli.build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def strict_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The CLI's parser, refusing abbreviated flags: argparse takes `--out` for `--output`, which would hide a
    renamed flag whose old name is a prefix of another; the README spells flags out."""
    parser = parser or cli.build_parser()
    parser.allow_abbrev = False
    for sub in subcommands(parser).values():
        strict_parser(sub)
    return parser


def parse(c: Command) -> argparse.Namespace:
    try:
        return strict_parser().parse_args(c.argv)
    except SystemExit:
        pytest.fail(f"{c}\n  does not parse with the CLI's parser (argparse's message is above)")


def check_config(args: argparse.Namespace) -> None:
    """Build the config the command would run with (no model, no data): unknown keys and bad values fail."""
    from transferlm.methods import get_method
    from transferlm.protocol.compare import _apply, grid_points

    if getattr(args, "config", None) and not Path(args.config).is_file():
        return  # a file the user writes (serve.yaml, experiment.yaml): the YAML blocks are checked on their own
    for flag in ("template", "label_words"):
        if str(getattr(args, flag, None) or "").endswith(".json"):
            return  # a file written by `transferlm search`
    cmd = args.command
    if cmd in ("run", "probe", "search"):
        run = cli.build_run_dict(args)["run"]
        if cmd == "search":
            run.setdefault("method", "prompt-finetune")  # as `search` itself does
        cfg = RunConfig.from_dict(run, source="flags")
        cfg.train.validate()
        get_method(cfg.method).parse_config(cfg.method_args)
    elif cmd == "compare":
        cfg = cli.compare_config(args)
        cfg.run.train.validate()
        for point in grid_points(cfg.grid):
            for method in cfg.methods:
                run = _apply(cfg.run, point, method=method)
                run.train.validate()
                get_method(method).parse_config(run.method_args)
    elif cmd == "pretrain":
        cli.pretrain_config(args)
    elif cmd == "multitask":
        cli.multitask_config(args)
    elif cmd == "serve":
        from transferlm.serving.cli import serve_config

        serve_config(args)
    elif cmd == "reproduce":
        from transferlm.reports.cli import reproduce_plan
        from transferlm.reports.reproduce import validate

        validate(reproduce_plan(args), check_data=False)


def check_all(commands: list[Command]) -> None:
    """Check every command, then fail once, listing each one that broke."""
    failures = []
    for c in commands:
        try:
            check_command(c)
        except pytest.fail.Exception as e:
            failures.append(str(e))
    if failures:
        pytest.fail(f"{len(failures)} of {len(commands)} commands broke:\n" + "\n".join(failures), pytrace=False)


def check_command(c: Command) -> None:
    from transferlm.errors import TransferLMError

    args = parse(c)
    try:
        check_config(args)
    except TransferLMError as e:
        pytest.fail(f"{c}\n  parses, but its config is rejected: {e}")


# --- the README's code blocks -------------------------------------------------------------------------------


def test_readme_commands_parse_and_configure(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # relative paths in the commands (runs/..., serve.yaml) must not exist
    monkeypatch.setenv("TRANSFERLM_DATA", str(tmp_path / "data"))
    commands = readme_commands()
    # Guard against a parser change that silently finds nothing: the README has 17 such lines.
    assert len(commands) >= 17, [str(c) for c in commands]
    seen = {c.argv[0] for c in commands}
    assert {"run", "compare", "search", "serve", "report", "reproduce"} <= seen, seen
    check_all(commands)


def test_help_examples_parse_and_configure(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRANSFERLM_DATA", str(tmp_path / "data"))
    commands = help_commands()
    assert len(commands) >= 25, [str(c) for c in commands]
    assert {c.argv[0] for c in commands} >= {"run", "compare", "pretrain", "multitask", "kshot", "probe", "serve",
                                             "report", "reproduce", "search"}
    check_all(commands)
    for name, sub in subcommands().items():  # a lost `\\` in an epilog glues a command's lines into one
        assert not re.search(r"\S {4,}--", sub.epilog or ""), f"transferlm {name} --help: a broken example line"


INLINE = re.compile(r"`((?:python -m )?transferlm [^`]+)`")


def inline_commands() -> list[tuple[int, str]]:
    """Commands quoted in prose and tables (outside code blocks): ``transferlm kshot --task T [--verify]``."""
    out, in_block = [], False
    for i, line in enumerate(README.read_text(encoding="utf-8").splitlines(), start=1):
        if re.match(r"^\s*```", line):
            in_block = not in_block
            continue
        if not in_block:
            out += [(i, m.group(1)) for m in INLINE.finditer(line)]
    return out


def test_readme_inline_commands_name_real_commands_and_flags():
    """Inline commands carry placeholders (``K|full``, ``[--verify]``, ``DIRS...``), so they are not parsed
    whole: their command (and subcommand) must exist and each flag must be one of that command's."""
    top = subcommands()
    found = inline_commands()
    assert len(found) >= 15, found
    for line, text in found:
        words = text.replace("\\|", "|").split()
        words = words[3:] if words[0] == "python" else words[1:]
        if not words or words[0] in ("...", "…"):
            continue
        name = words[0]
        assert name in top, f"README.md:{line}: `{text}`: no command '{name}'"
        parsers = [top[name]]
        if subcommands(top[name]):  # search labels|templates
            alternatives = words[1].split("|") if len(words) > 1 and not words[1].startswith("-") else []
            subs = subcommands(top[name])
            assert alternatives and all(a in subs for a in alternatives), \
                f"README.md:{line}: `{text}`: '{name}' takes one of {sorted(subs)}"
            parsers = [subs[a] for a in alternatives]
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text):
            for p in parsers:
                assert flag in p._option_string_actions, \
                    f"README.md:{line}: `{text}`: transferlm {p.prog.split(' ', 1)[1]} has no {flag}"


def test_readme_yaml_blocks_load_through_the_config_loader(tmp_path):
    from transferlm.methods import get_method

    blocks = [b for b in fenced_blocks(README.read_text(encoding="utf-8")) if b.lang in ("yaml", "yml")]
    assert blocks, "README.md has no YAML block any more: update this test"
    for b in blocks:
        path = tmp_path / f"readme-{b.line}.yaml"
        path.write_text(b.body, encoding="utf-8")
        args = cli.build_parser().parse_args(["compare", "--config", str(path)])
        try:
            cfg = cli.compare_config(args)
            for method in cfg.methods:
                get_method(method).parse_config(cfg.run.method_args)
            cfg.run.train.validate()
            cli.run_config(cli.build_parser().parse_args(["run", "--config", str(path)]))
        except Exception as e:  # noqa: BLE001  (say which block)
            pytest.fail(f"README.md:{b.line}: the YAML block does not load: {e}")


def test_readme_python_blocks_import_what_exists():
    blocks = [b for b in fenced_blocks(README.read_text(encoding="utf-8")) if b.lang == "python"]
    assert blocks, "README.md has no Python block any more: update this test"
    imported = 0
    for b in blocks:
        tree = ast.parse(b.body, filename=f"README.md:{b.line}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("transferlm"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    imported += 1
                    assert hasattr(module, alias.name), \
                        f"README.md:{b.line + node.lineno - 1}: {node.module} has no {alias.name}"
    assert imported >= 4


def test_readme_dotted_api_names_exist():
    """``transferlm.load_task(...)``, ``transferlm.methods.efficient.apply_peft`` and the like, quoted in prose."""
    names = set(re.findall(r"`(transferlm(?:\.[A-Za-z_]\w*)+)", README.read_text(encoding="utf-8")))
    assert len(names) >= 3, names
    for name in sorted(names):
        parts = name.split(".")
        obj, i = None, len(parts)
        while i > 0:  # the longest importable module, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:i]))
                break
            except ModuleNotFoundError:
                i -= 1
        for attr in parts[i:]:
            assert hasattr(obj, attr), f"README.md names `{name}`, but {'.'.join(parts[:i])} has no {attr}"
            obj = getattr(obj, attr)


def test_readme_curl_bodies_match_the_request_schema():
    from transferlm.serving.schemas import ClassifyRequest

    bodies = []
    for b in fenced_blocks(README.read_text(encoding="utf-8")):
        for _, line in logical_lines(b.body, b.line):
            tokens = shlex.split(line, comments=True) if line.lstrip().startswith("curl") else []
            bodies += [tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t in ("-d", "--data")]
    assert bodies, "no curl -d example found in README.md"
    for body in bodies:
        ClassifyRequest.model_validate(json.loads(body))


# --- the checker itself must be able to fail ------------------------------------------------------------------


@pytest.mark.parametrize("broken", [
    "transferlm run --task SST-2 --stepz 2 --output runs/x",  # a removed or misspelt flag
    "transferlm run --task SST-2 --set train.learning_rat=1e-3 --output runs/x",  # an unknown config key
    "transferlm run --task SST-2 --method lora --set method_args.rank=8 --output runs/x",  # an unknown option
    "transferlm compare --task cr --grid train.lr=1e-5,2e-5 --output runs/cr",  # an unknown grid key
    "transferlm serve --model minilm-l6 --batching mixd",  # a value outside the choices
    "transferlm reproduce --suite peft --set data.shotz=8 --dry-run",  # reproduce checks --set keys
    "transferlm pretrain --model minilm-l6 --text t.txt --tapt-seeds 13,x --output m",
    "transferlm report runs/sst2 --out reports/x",  # an abbreviation argparse would take for --output
])
def test_a_broken_command_fails(broken, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (c,) = shell_commands(broken, 1)
    with pytest.raises(pytest.fail.Exception):
        check_command(c)


def test_reproduce_dry_run_checks_set_keys(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["reproduce", "--suite", "peft", "--quick", "--set", "train.bogus=1", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) bogus" in err and err.count("\n") == 1


def test_a_closed_pipe_ends_quietly(monkeypatch, capsys):
    """`transferlm reproduce --dry-run | head`: no traceback when the reader leaves."""
    def fn(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "cmd_methods", fn)
    assert cli.main(["methods"]) == 141
    assert capsys.readouterr().err == ""


def test_the_extraction_reads_continuations_prefixes_and_comments():
    text = ("# a comment: transferlm run --nope\n"
            "bash scripts/setup.sh && .venv/bin/transferlm compare --task SST-2 \\\n"
            "    --methods finetune   # trailing comment --nope\n"
            "TRANSFERLM_DATA=d python -m transferlm tasks | head\n"
            "curl -s localhost:8000/v1/classify -d '{\"task\": \"transferlm run\"}'\n")
    assert [c.argv for c in shell_commands(text, 1)] == [["compare", "--task", "SST-2", "--methods", "finetune"],
                                                         ["tasks"]]
