"""Policy YAML -> `spec.PolicyFile`: the one place a policy document is read and validated.

The schema (`autoscaler.spec`) checks the document's own fields; each `policies:` entry is then
validated here by its kind's own model (`policy.registry`), so a plug-in's config errors name
the file and field path like any other. Every error is one line: `FILE: path.to.field: message
(got VALUE)`; nothing is half-applied (a document is accepted whole or rejected).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from pydantic import ValidationError

from autoscaler import errors
from autoscaler.policy import registry
from autoscaler.spec import PolicyFile
from autoscaler.yamlsafe import format_validation_error, load_yaml, read_text


def validate_plugins(policy: PolicyFile) -> None:
    """Validate every `policies:` entry with its kind's model; the first bad entry raises a
    ConfigError naming its path (as the schema's own validation stops at the first model)."""
    for pi, pool in enumerate(policy.pools):
        for role, spec in pool.roles.items():
            for qi, ref in enumerate(spec.policies):
                registry.validate_ref(ref, where=f"pools.{pi}.roles.{role.value}.policies.{qi}")


def parse_policy(text: str, *, source: str = "<policy>") -> PolicyFile:
    """Parse and validate policy YAML text; raise ConfigError with one line per problem."""
    data = load_yaml(text, source=source)
    if not isinstance(data, dict):
        kind = type(data).__name__ if data is not None else "an empty document"
        raise errors.ConfigError([f"{source}: (top level): expected a mapping, got {kind}"])
    try:
        policy = PolicyFile.model_validate(data)
    except ValidationError as exc:
        raise errors.ConfigError(format_validation_error(source, exc)) from exc
    try:
        validate_plugins(policy)
    except errors.ConfigError as exc:
        raise errors.ConfigError([f"{source}: {line}" for line in exc.problems]) from exc
    return policy


async def parse_policy_async(text: str, *, source: str = "<policy>") -> PolicyFile:
    """`parse_policy` in a worker thread. A 1 MiB policy takes seconds to parse and validate;
    on the event loop that renews the leader lease and answers probes that is an outage."""
    return await asyncio.to_thread(parse_policy, text, source=source)


def load_policy_file(path: str | Path) -> PolicyFile:
    """Read and validate one policy file."""
    p = Path(path)
    text = read_text(p)
    return parse_policy(text, source=str(p))
