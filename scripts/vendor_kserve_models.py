"""Vendor the field tables of the KServe Python SDK's model classes (``kserve/models/*.py`` of the kserve
wheel: the OpenAPI-generated classes of the ServingRuntime and InferenceService CRDs) as JSON, for the
structural check of k8s/kserve/ in tests/deploy. No registry package ships KServe's CRD YAML (the kserve
wheel has none; npm has no @kubernetes-models/kserve), so the SDK's classes are the schema we can vendor.

    pip download --no-deps -d /tmp/kserve kserve==0.21.0
    python scripts/vendor_kserve_models.py /tmp/kserve/kserve-0.21.0-py3-none-any.whl \
        tests/deploy/kserve/kserve-0.21.0-models.json

The wheel's files are read as text and parsed (``ast``), never imported. Per class: ``fields`` (JSON name ->
the SDK's type string: str, int, bool, dict(str, str), list[X], a class name; V1* names without a kserve
prefix are Kubernetes core types) and ``required`` (the JSON names whose setter refuses None).
"""

from __future__ import annotations

import ast
import json
import re
import sys
import zipfile
from pathlib import Path


def tables(source: str) -> dict[str, dict]:
    classes = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        found: dict[str, dict] = {}
        for item in node.body:
            if isinstance(item, ast.Assign) and isinstance(item.targets[0], ast.Name):
                if item.targets[0].id in ("openapi_types", "attribute_map"):
                    found[item.targets[0].id] = ast.literal_eval(item.value)
        if set(found) == {"openapi_types", "attribute_map"}:
            required = re.findall(
                r"Invalid value for `(\w+)`, must not be `None`", ast.get_source_segment(source, node)
            )
            names = found["attribute_map"]
            classes[node.name] = {
                "fields": {names[k]: t for k, t in sorted(found["openapi_types"].items())},
                "required": sorted(names[k] for k in set(required)),
            }
    return classes


def main(wheel: str, out: str) -> int:
    models: dict[str, dict] = {}
    with zipfile.ZipFile(wheel) as archive:
        version = re.search(r"kserve-([^-]+)-", Path(wheel).name)[1]
        for name in sorted(archive.namelist()):
            if name.startswith("kserve/models/") and name.endswith(".py") and not name.endswith("__init__.py"):
                models.update(tables(archive.read(name).decode()))
    document = {"source": f"kserve=={version} (PyPI), kserve/models/*.py", "classes": models}
    Path(out).write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    print(f"{len(models)} classes -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
