"""Bad input for the config loader (property-based): whatever a gateway or profile file
contains - any YAML document, any bytes, a valid file with any key replaced - loading it
either works or raises ConfigError whose every problem starts with the file's name; never
another exception (a traceback is no message for a field technician)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.security.strategies import json_values, nearly_valid
from urbansense.config import ConfigError, load_gateway, load_profile

PROFILE: dict[str, Any] = {
    "profile": "test-meter", "measurement": "water",
    "fields": [{"name": "pressure_mpa", "table": "holding", "address": 0, "type": "float32", "order": "CDAB"},
               {"name": "setpoint_pct", "table": "holding", "address": 2, "type": "uint16", "writable": True,
                "min": 0, "max": 100}],
}
GATEWAY: dict[str, Any] = {
    "gateway": "gw-1", "district": "testville", "profiles_dir": "profiles",
    "links": [{"name": "plc-1", "host": "127.0.0.1", "port": 15020,
               "devices": [{"id": "dev-1", "profile": "test-meter", "unit": 1}]}],
    "uplink": {"host": "127.0.0.1", "port": 1883}, "batch": {"max_samples": 500},
}
examples = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def tree() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cfg-fuzz-") as tmp:
        root = Path(tmp)
        (root / "profiles").mkdir()
        yield root


def _load(path: Path, loader: Any) -> None:
    try:
        loader(path)
    except ConfigError as exc:
        assert exc.problems, "a ConfigError without problems"
        for problem in exc.problems:
            assert problem.startswith(str(path)) or problem.startswith(path.name) or path.name in problem, problem


def _gateway_file(tree: Path, content: bytes) -> Path:
    (tree / "profiles" / "test-meter.yaml").write_text(yaml.safe_dump(PROFILE))
    path = tree / "gw-1.yaml"
    path.write_bytes(content)
    return path


def _mutations(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Mutate the top level, a link, or a device/field of a valid document."""
    @st.composite
    def mutate(draw: st.DrawFn) -> dict[str, Any]:
        doc: dict[str, Any] = yaml.safe_load(yaml.safe_dump(base))  # deep copy
        nested = [doc]
        for key in ("links", "fields"):
            for item in doc.get(key, []):
                nested.append(item)
                nested.extend(item.get("devices", []))
        target = draw(st.sampled_from(nested))
        mutated = draw(nearly_valid(st.just(dict(target))))
        target.clear()
        target.update(mutated)
        return doc
    return mutate()


@examples
@given(json_values | _mutations(GATEWAY))
def test_any_gateway_document(tree: Path, doc: Any) -> None:
    _load(_gateway_file(tree, yaml.safe_dump(doc, allow_unicode=True).encode()), load_gateway)


@examples
@given(json_values | _mutations(PROFILE))
def test_any_profile_document(tree: Path, doc: Any) -> None:
    path = tree / "test-meter.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    _load(path, load_profile)


@examples
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes(tree: Path, content: bytes) -> None:
    _load(_gateway_file(tree, content), load_gateway)


HOSTILE = {
    "billion laughs": "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))
        + "gateway: *i\n",
    "python object": "gateway: !!python/object/apply:os.system ['echo pwned']\n",
    "deep nesting": "gateway: " + "[" * 5000 + "]" * 5000 + "\n",
    "not UTF-8": "gateway: gw-1\ndistrict: t\xe9st\n",
    "byte-order mark": "\ufeffgateway: gw-1\n",
    "tabs": "gateway: gw-1\n\tdistrict: x\n",
    "duplicate keys": "gateway: gw-1\ngateway: gw-2\n",
    "merge key": "base: &b {host: 127.0.0.1}\nlinks: [{<<: *b, name: x, port: 1, devices: []}]\n",
    "timestamp and infinity": "gateway: 2024-01-01\npoll_interval_s: .inf\n",
    "nan poll": "gateway: gw-1\ndistrict: t\npoll_interval_s: .nan\nlinks: []\n",
    "huge integer": "gateway: gw-1\ndistrict: t\nlinks: [{name: l, host: h, port: 99999999999999999999999, "
                    "devices: []}]\n",
    "binary tag": "gateway: !!binary aGVsbG8=\n",
    "empty": "",
    "only a comment": "# nothing\n",
    "a list": "- gateway: gw-1\n",
    "path traversal profile": yaml.safe_dump({**GATEWAY, "links": [{**GATEWAY["links"][0], "devices": [
        {"id": "dev-1", "profile": "../../../etc/passwd", "unit": 1}]}]}),
}


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_yaml(tree: Path, text: str) -> None:
    content = text.encode("latin-1") if "\xe9" in text else text.encode()
    _load(_gateway_file(tree, content), load_gateway)


def test_a_nul_in_profiles_dir_is_a_config_error_naming_the_key(tree: Path) -> None:
    """Found by the property test above in CI: a NUL in `profiles_dir` reached the OS's
    realpath and stopped the loader with ValueError("embedded null byte")."""
    for key, doc in (("profiles_dir", {**GATEWAY, "profiles_dir": "\x00"}),
                     ("wal.path", {**GATEWAY, "wal": {"path": "edge\x00.wal"}})):
        path = _gateway_file(tree, yaml.safe_dump(doc).encode())
        with pytest.raises(ConfigError) as err:
            load_gateway(path)
        assert any(key in p and "NUL" in p for p in err.value.problems), err.value.problems
