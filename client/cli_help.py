"""The help conventions of `dspy-registry`: every command's `--help` says what it does and shows an example.

The examples live here, in one table keyed by the command's words, rather than beside each parser:
a test (tests/e2e/test_cli_conventions.py) walks every subparser and fails when one has no
description or no example, and parses each example with the real parser, so that an example cannot
drift from the options it shows.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from importlib import metadata

# One example per command, by its words after `dspy-registry`. A group (`program`) shows one of its own.
EXAMPLES: dict[str, str] = {
    "serve": "dspy-registry serve --listen 0.0.0.0:50051 --database sqlite:///registry.db",
    "sidecar": "dspy-registry sidecar --program triage --environment production --dir /srv/programs",
    "migrate": "dspy-registry migrate --database postgresql://registry@db/registry --check",
    "admin": "dspy-registry admin reset-token --database sqlite:///.dspy-registry/registry.db",
    "admin reset-token": (
        "dspy-registry admin reset-token --database postgresql://registry@db/registry "
        "--token-file admin.token"
    ),
    "admin generate-token": "dspy-registry admin generate-token > admin.token",
    "completion": "dspy-registry completion bash > /etc/bash_completion.d/dspy-registry",
    "doctor": "dspy-registry --server registry.example.com:443 --tls-ca system doctor",
    "signature": "dspy-registry signature list --prefix classify",
    "signature register": "dspy-registry signature register classify --file classify.json --version 1.0.0",
    "signature list": "dspy-registry signature list --prefix classify",
    "signature show": "dspy-registry signature show classify@1.0.0",
    "program": "dspy-registry program versions triage",
    "program register": (
        "dspy-registry program register triage --file program.json --signature classify@1.0.0 "
        "--version 1.1.0 --performance accuracy=0.92 --label team=support"
    ),
    "program list": "dspy-registry program list --environment production --team support",
    "program show": "dspy-registry program show triage@1.1.0",
    "program versions": "dspy-registry program versions triage",
    "program compare": "dspy-registry program compare triage 1.0.0 1.1.0",
    "program upgrade-path": "dspy-registry program upgrade-path triage 1.0.0 2.0.0",
    "program yank": "dspy-registry program yank triage 1.2.0 --reason 'swapped labels'",
    "deploy": "dspy-registry deploy triage 1.1.0 production --canary 10,50 --pause 300 --wait",
    "promote": "dspy-registry promote deployments/abc123 --full --reason 'metrics look good'",
    "approve": "dspy-registry approve deployments/abc123 --comment 'reviewed the eval report'",
    "abort": "dspy-registry abort deployments/abc123 --reason 'wrong version'",
    "rollback": "dspy-registry rollback deployments/abc123 --reason 'accuracy dropped'",
    "status": "dspy-registry status triage production --watch",
    "history": "dspy-registry history triage production --limit 10",
    "watch": "dspy-registry watch 'triage*' production --json",
    "check": "dspy-registry check report triage@1.1.0 integration_tests passed",
    "check report": (
        "dspy-registry check report triage@1.1.0 integration_tests passed --url https://ci.example.com/run/42"
    ),
    "env": "dspy-registry env show production",
    "env list": "dspy-registry env list",
    "env show": "dspy-registry env show production",
    "env set": "dspy-registry env set production policy.required_approvals=2",
    "webhook": "dspy-registry webhook list",
    "webhook create": (
        "dspy-registry webhook create oncall https://hooks.example.com/dspy --event auto_rollback "
        "--select '*/production' > oncall.secret"
    ),
    "webhook list": "dspy-registry webhook list --json",
    "webhook delete": "dspy-registry webhook delete oncall",
    "webhook deliveries": "dspy-registry webhook deliveries oncall --state failed",
    "webhook secret": "dspy-registry webhook secret add oncall > oncall-new.secret",
    "webhook secret add": "dspy-registry webhook secret add oncall > oncall-new.secret",
    "webhook secret retire": "dspy-registry webhook secret retire webhooks/oncall/secrets/initial",
    "principal": "dspy-registry principal list",
    "principal create": "dspy-registry principal create alice --team support --email alice@example.com",
    "principal list": "dspy-registry principal list --all",
    "principal disable": "dspy-registry principal disable alice --reason 'left the team'",
    "principal enable": "dspy-registry principal enable alice",
    "token": "dspy-registry token list alice",
    "token create": "dspy-registry token create alice --ttl 86400 > alice.token",
    "token list": "dspy-registry token list alice",
    "token revoke": "dspy-registry token revoke principals/alice/tokens/abc123",
    "grant": "dspy-registry grant alice deploy 'triage*'",
    "revoke": "dspy-registry revoke permissions/abc123",
    "audit": "dspy-registry audit --principal alice --limit 20",
}


SHELLS = ("bash", "zsh", "fish")

COMPLETION_HELP = """\
The completion script for a shell, made from the command's own parser (shtab): every
command, option and choice completes, and a new release's script follows its parser.

  bash  dspy-registry completion bash > ~/.local/share/bash-completion/completions/dspy-registry
  zsh   dspy-registry completion zsh > ~/.zfunc/_dspy-registry
        (with fpath=(~/.zfunc $fpath) before compinit in ~/.zshrc)
  fish  dspy-registry completion fish > ~/.config/fish/completions/dspy-registry.fish
"""


def completion(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for `shell`: bash, zsh or fish."""
    # Imported here: only this command needs it, and every command is a process of its own.
    import shtab

    script: str = shtab.complete(parser, shell=shell)
    return script


def version() -> str:
    """The installed package's version (pyproject.toml's), as `--version` prints it."""
    try:
        return metadata.version("dspy-registry")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def subcommands(
    parser: argparse.ArgumentParser, words: str = ""
) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """Every subparser under `parser`, depth first: its words (`program show`), its one-line help, itself."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
        for name, sub in action.choices.items():
            path = f"{words} {name}".strip()
            yield path, helps.get(name, ""), sub
            yield from subcommands(sub, path)


def document(parser: argparse.ArgumentParser) -> None:
    """Gives each subcommand's `--help` a description (its one-line help, where it has none) and its
    example, after anything its epilog says already."""
    for words, summary, sub in subcommands(parser):
        if not sub.description:
            sub.description = summary[:1].upper() + summary[1:] + "." if summary else None
        example = EXAMPLES.get(words)
        if example is None:
            continue
        shown = f"example:\n  {example}"
        sub.epilog = f"{sub.epilog.rstrip()}\n\n{shown}" if sub.epilog else shown
        # The example's line breaks stay as written (and a description is a paragraph either way).
        sub.formatter_class = argparse.RawDescriptionHelpFormatter
