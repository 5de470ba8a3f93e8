"""Rule files: YAML under rules/catalog/, one per domain, validated on load."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from urbansense.config import ConfigError, load_model
from urbansense.identifiers import METRIC_PATTERN

CATALOG_DIR = Path(__file__).resolve().parent / "catalog"


class ThresholdRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*\.[a-z0-9_]+$")
    kind: Literal["threshold"] = "threshold"
    measurement: Literal["water", "gas", "lighting", "elevator", "air"]
    metric: str = Field(pattern=METRIC_PATTERN)
    op: Literal["above", "below"]
    threshold: float
    #: Level at which a firing alert resolves (hysteresis); default: the threshold itself.
    clear: float | None = None
    for_s: float = Field(default=0, ge=0)
    severity: Literal["info", "warning", "critical"] = "warning"
    message: str = "{metric} at {device} is {value:.3f}, {op} {threshold}"

    @model_validator(mode="after")
    def _clear_side(self) -> ThresholdRule:
        if self.clear is not None:
            if self.op == "below" and self.clear < self.threshold:
                raise ValueError(f"clear ({self.clear}) must be >= threshold ({self.threshold}) for op below")
            if self.op == "above" and self.clear > self.threshold:
                raise ValueError(f"clear ({self.clear}) must be <= threshold ({self.threshold}) for op above")
        return self


class RuleFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    domain: Literal["water", "gas", "lighting", "elevator", "air", "system"]
    version: int = 1
    rules: list[ThresholdRule] = Field(default_factory=list)


def load_catalog(path: Path = CATALOG_DIR) -> list[ThresholdRule]:
    files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    rules: list[ThresholdRule] = []
    problems: list[str] = []
    seen: set[str] = set()
    for f in files:
        try:
            rf = load_model(f, RuleFile)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        for i, rule in enumerate(rf.rules):
            if rule.id in seen:
                problems.append(f"{f}: rules[{i}].id: rule {rule.id!r} is defined twice\n  fix: rename one")
            seen.add(rule.id)
            rules.append(rule)
    if problems:
        raise ConfigError(problems)
    return rules
