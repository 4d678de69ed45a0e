"""A prompt row's fields: each field's rule, written once, and the model built from them.

`PromptRow` is what a row is, wherever it comes from: a CSV / JSONL / Parquet file, the
rows typed into the Prefect UI's form for the bulk-generation deployment, or a style template's
and a user's parameters merged into it. The form shows these fields' types, limits and
descriptions (the JSON schema of the model); the intake checks every row through the very same
validators, so the form, the command line and a file cannot disagree about a value. A bad
value's message names what is wrong ("is 99; must be 0-30"), and the intake turns it into the
row's rejection.
"""

from __future__ import annotations

import functools
import math
import re
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from stave.infra.errors import InvalidInput
from stave.models.base import parse_id

PROMPT_MAX = 512
LYRICS_MAX = 4096
NAME_MAX = 128
DURATION_S = (1.0, 600.0)
STEPS = (1, 200)
GUIDANCE = (0.0, 30.0)
SCHEDULERS = ("euler", "heun")  # generator.sampler.SCHEDULERS, without importing torch here
MAX_SEED = 2**63 - 1
USER_ID = r"^[A-Za-z0-9_.@-]{1,128}$"
_USER_ID = re.compile(USER_ID)


class BadValue(ValueError):
    """One field's value is wrong; the message is the reason."""


def missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str) and not value.strip():
        return True
    return isinstance(value, float) and math.isnan(value)


def _text(value: Any, *, limit: int, allow: str = "") -> str:
    if not isinstance(value, str):
        raise BadValue(f"must be text, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadValue("is not valid UTF-8 (contains a lone surrogate)") from None
    if len(value) > limit:
        raise BadValue(f"is {len(value)} characters; the limit is {limit}")
    found = _controls(allow).search(value)
    if found is not None:
        position = found.start()
        raise BadValue(
            f"contains control character U+{ord(value[position]):04X} at position {position}"
        )
    return value


@functools.cache
def _controls(allow: str) -> re.Pattern[str]:
    """Unicode's control (Cc) and surrogate (Cs) characters, less those allowed: one regex
    search per value (the hot path of a million-row submission), not a loop over characters."""
    ranges = "\x00-\x1f\x7f-\x9f\ud800-\udfff"
    pattern = re.compile(f"[{ranges}]")
    if allow:
        pattern = re.compile(f"(?![{re.escape(allow)}])[{ranges}]")
    return pattern


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise BadValue("must be a number, not true/false")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise BadValue(f"{value.strip()[:40]!r} is not a number") from None
    else:
        raise BadValue(f"must be a number, not {type(value).__name__}")
    if not math.isfinite(number):
        raise BadValue("must be a finite number")
    return number


def _integer(value: Any) -> int:
    if isinstance(value, bool):
        raise BadValue("must be an integer, not true/false")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    number = _number(value)
    if not number.is_integer() or abs(number) >= 2**53:
        raise BadValue(f"{value!r} is not an integer")
    return int(number)


def _between(number: float, bounds: tuple[float, float], unit: str = "") -> float:
    low, high = bounds
    if not low <= number <= high:
        raise BadValue(f"is {number:g}{unit}; must be {low:g}-{high:g}{unit}")
    return number


def prompt(value: Any) -> str:
    text = _text(value, limit=PROMPT_MAX)
    if not text.strip():
        raise BadValue("is empty")
    return text


def lyrics(value: Any) -> str:
    return _text(value, limit=LYRICS_MAX, allow="\n\r\t")


def duration_s(value: Any) -> float:
    return _between(_number(value), DURATION_S, " s")


def steps(value: Any) -> int:
    return int(_between(_integer(value), STEPS))


def guidance(value: Any) -> float:
    return _between(_number(value), GUIDANCE)


def scheduler(value: Any) -> str:
    name = _text(value, limit=32).strip().lower()
    if name not in SCHEDULERS:
        raise BadValue(f"{name!r} is not a known scheduler ({', '.join(SCHEDULERS)})")
    return name


def seed(value: Any) -> int:
    number = _integer(value)
    if not 0 <= number <= MAX_SEED:
        raise BadValue("must be a 63-bit non-negative integer (0 to 2^63-1)")
    return number


def user_id(value: Any) -> str:
    text = _text(value, limit=NAME_MAX).strip()
    if not _USER_ID.match(text):
        raise BadValue("must be 1-128 characters of letters, digits and _ . @ -")
    return text


def name(value: Any) -> str:
    return _text(value, limit=NAME_MAX).strip()


def revision(value: Any) -> uuid.UUID:
    try:
        return parse_id(value if isinstance(value, uuid.UUID) else _text(value, limit=64), "")
    except InvalidInput:
        raise BadValue(f"{str(value)[:40]!r} is not an id (a UUID)") from None


def _optional(rule: Any) -> BeforeValidator:
    """The field's rule on a given value; a missing one (None, blank, NaN) stays None."""
    return BeforeValidator(lambda value: None if missing(value) else rule(value))


# The fields' types: the rule first (its message names the problem), then the limits the UI's
# form shows (and pydantic enforces again), then the description the form shows.
Prompt = Annotated[
    Annotated[str, Field(min_length=1, max_length=PROMPT_MAX)],
    BeforeValidator(lambda value: prompt("" if value is None else value)),
    Field(
        description="What the clip should sound like, e.g. 'warm organ chords in A minor, "
        "90 bpm'. A tempo ('N bpm') and a key ('A minor') are read from it."
    ),
]
Lyrics = Annotated[
    Annotated[str, Field(max_length=LYRICS_MAX)] | None,
    _optional(lyrics),
    Field(description="Lyrics (new lines allowed)."),
]
Duration = Annotated[
    Annotated[float, Field(ge=DURATION_S[0], le=DURATION_S[1])] | None,
    _optional(duration_s),
    Field(description="Clip length in seconds."),
]
Steps = Annotated[
    Annotated[int, Field(ge=STEPS[0], le=STEPS[1])] | None,
    _optional(steps),
    Field(description="Diffusion steps (more: slower, finer)."),
]
Guidance = Annotated[
    Annotated[float, Field(ge=GUIDANCE[0], le=GUIDANCE[1])] | None,
    _optional(guidance),
    Field(description="How closely to follow the prompt."),
]
Scheduler = Annotated[
    Literal["euler", "heun"] | None,
    _optional(scheduler),
    Field(description="The sampler's integration scheme."),
]
Seed = Annotated[
    Annotated[int, Field(ge=0, le=MAX_SEED)] | None,
    _optional(seed),
    Field(description="Seed for a reproducible clip (random if unset)."),
]
UserId = Annotated[
    Annotated[str, Field(pattern=USER_ID)] | None,
    _optional(user_id),
    Field(description="Whose clip it is (default: the run's user_id)."),
]
TemplateName = Annotated[
    Annotated[str, Field(max_length=NAME_MAX)] | None,
    _optional(name),
    Field(description="A style template's name (`stave templates list`)."),
]
Revision = Annotated[
    uuid.UUID | None,
    _optional(revision),
    Field(description="The prompt revision this row edits (its history)."),
]
IdempotencyKey = Annotated[
    Annotated[str, Field(max_length=NAME_MAX)] | None,
    _optional(name),
    Field(description="Resubmitting the same key makes nothing new."),
]


class PromptRow(BaseModel):
    """One clip to make: a prompt, and whichever generation parameters the row sets (the
    rest come from its style template, its user's preferences, then the settings)."""

    model_config = ConfigDict(extra="forbid")

    prompt: Prompt
    lyrics: Lyrics = None
    duration_s: Duration = None
    steps: Steps = None
    guidance: Guidance = None
    scheduler: Scheduler = None
    seed: Seed = None
    user_id: UserId = None
    style_template: TemplateName = None
    parent_revision: Revision = None
    idempotency_key: IdempotencyKey = None


COLUMNS = tuple(PromptRow.model_fields)


def _rule_of(field: str) -> Any:
    info = PromptRow.model_fields[field]
    return next(m.func for m in info.metadata if isinstance(m, BeforeValidator))


# Each column's rule, as the model calls it (None for a missing value included): the intake's
# hot path calls these directly. What the model checks after a rule (a type, the limits the
# form shows) the rule has checked already, so a row the rules pass is the row the model
# makes (tests/test_intake.py holds the two to that); a row they stop goes through the model,
# whose error names the field.
RULES = {field: _rule_of(field) for field in COLUMNS}
# Generation parameters: these may also come from a style template or a user's preferences.
PARAMETERS = ("duration_s", "steps", "guidance", "scheduler", "seed")
