"""Model versions and hot, read-mostly configuration: style templates and user preferences."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from stave.models.base import id_field, jsonb_field, timestamp_field
from stave.models.lifecycle import LifecyclePolicy, lifecycle


# A trained checkpoint that made clips: enough to find and verify it again.
@lifecycle(LifecyclePolicy(action="keep"))
class ModelVersion(SQLModel, table=True):
    __tablename__ = "model_version"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: uuid.UUID = id_field()
    name: str = Field(max_length=128)
    version: str = Field(max_length=64)
    checkpoint_uri: str = Field(max_length=1024)
    checkpoint_sha256: str = Field(max_length=64, min_length=64)
    config: dict[str, Any] = jsonb_field()
    code_version: str = Field(max_length=64)
    created_at: datetime = timestamp_field()


# Named parameter presets that prompt rows may refer to (`style_template` column).
@lifecycle(LifecyclePolicy(action="keep"))
class StyleTemplate(SQLModel, table=True):
    __tablename__ = "style_template"

    id: uuid.UUID = id_field()
    name: str = Field(max_length=128, unique=True)
    description: str = Field(default="", max_length=1024)
    parameters: dict[str, Any] = jsonb_field()
    created_at: datetime = timestamp_field()
    updated_at: datetime = timestamp_field()


# A user's default generation parameters.
@lifecycle(LifecyclePolicy(action="keep"))
class UserPreference(SQLModel, table=True):
    __tablename__ = "user_preference"

    id: uuid.UUID = id_field()
    user_id: str = Field(max_length=128, unique=True)
    parameters: dict[str, Any] = jsonb_field()
    created_at: datetime = timestamp_field()
    updated_at: datetime = timestamp_field()
