"""Checks that what the docs name exists (make lint runs it):

- every `make TARGET` in code is a target of the Makefile;
- every path in code under the repository's own folders exists (a glob must match);
- every `--set KEY=` names a key of the chart's values.yaml (settings: values.schema.json's);
- every environment variable in code (`NAME`, `NAME=value`) is read somewhere in the sources;
- every relative link and image resolves, anchors included (GitHub's heading slugs).

Reads README.md, docs/*.md, the chart's README.md and NOTES.txt. Prints each miss as
file:line and exits 1 when there is one.
"""

import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "circuit-breaker-demo"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), CHART / "README.md", CHART / "templates/NOTES.txt"]
# Folders whose paths the docs may name; generated ones (results/, .cache/, target/) are made by runs.
OWN = ("scripts/", "docs/", "loadtest/", "config/", "k8s/", "helm/", "tools/", "libs/", "services/", "controller/",
       "tests/", ".ci/")  # fmt: skip
# Upper-case words in code that are not variables: columns, methods, units, names.
NOT_VARIABLES = {
    "NAME", "MODE", "OPEN", "APPLIED", "EJECTED", "READY", "REASON", "AGE", "TARGET", "GET", "PUT", "POST",
    "TOKEN", "PATH", "HOME", "KUBECONFIG", "CI", "METRICS_ONLY", "RFC3339", "AIMD", "CEL", "TCP", "RSS", "PID",
}  # fmt: skip
SOURCES = ("*.rs", "*.py", "*.sh", "*.yaml", "*.tpl", "*.txt", "Makefile", "Dockerfile", "*.Dockerfile", "*.toml")
SKIP = ("target", ".cache", ".venv", "results", "results.partial", "dist", ".git", "node_modules")

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
# Put before a block that shows a mistake on purpose (a refused value), which is not checked.
ON_PURPOSE = "<!-- check-docs: a mistake on purpose -->"
SPAN = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} +(.*?) *$", re.MULTILINE)


def code_pieces(text: str) -> list[tuple[int, str]]:
    """(line, code) for each fenced block's lines and each inline code span outside them."""
    out = []
    spans_only = text
    for m in FENCE.finditer(text):
        first = text.count("\n", 0, m.start(1)) + 1
        if not text[: m.start()].rstrip().endswith(ON_PURPOSE):
            out += [(first + i, line) for i, line in enumerate(m.group(1).splitlines())]
        spans_only = spans_only.replace(m.group(0), "\n" * m.group(0).count("\n"), 1)
    for number, line in enumerate(spans_only.splitlines(), 1):
        out += [(number, m.group(1)) for m in SPAN.finditer(line)]
    return out


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.-]+):(?!=)", text, re.MULTILINE))


def values_keys() -> set[str]:
    def walk(node: dict, prefix: str) -> set[str]:
        keys = set()
        for key, value in node.items():
            keys.add(prefix + key)
            if isinstance(value, dict):
                keys |= walk(value, f"{prefix}{key}.")
        return keys

    keys = walk(yaml.safe_load((CHART / "values.yaml").read_text()), "")
    # The settings' keys as values.schema.json closes them (scripts/chart-docs.py, from the CRD).
    schema = json.loads((CHART / "values.schema.json").read_text())
    settings = schema["properties"]["breakerPolicy"]["properties"]["settings"]["properties"]
    return keys | {f"breakerPolicy.settings.{key}" for key in settings}


def source_text() -> str:
    files = set()
    for pattern in SOURCES:
        files |= {p for p in ROOT.rglob(pattern) if not any(part in SKIP for part in p.relative_to(ROOT).parts)}
    return "\n".join(p.read_text(errors="replace") for p in sorted(files) if p.is_file())


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(text):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def check(doc: Path, targets: set[str], keys: set[str], sources: str) -> list[str]:
    text = doc.read_text()
    where = doc.relative_to(ROOT).as_posix()
    misses = []
    for number, code in code_pieces(text):
        at = f"{where}:{number}"
        for target in re.findall(r"(?:^|[\s;&|(])make +(?:--?[\w-]+ +)*([a-z][a-z0-9-]*)", code):
            if target not in targets:
                misses.append(f"{at}: make {target}: no such target in the Makefile")
        for token in re.findall(r"[\w./*<>…{}-]+", code):
            token = token.rstrip(".,:;)")
            if not token.startswith(OWN) or re.search(r"[<>…{}]", token):
                continue
            if not (any(ROOT.glob(token)) if "*" in token else (ROOT / token).exists()):
                misses.append(f"{at}: {token}: no such file or folder")
        for key in re.findall(r"--set(?:-string|-json)? +['\"]?([A-Za-z][\w.]*)=", code):
            if key not in keys:
                misses.append(f"{at}: --set {key}: no such key in values.yaml")
        for name in re.findall(r"(?:^|[\s'\"(])([A-Z][A-Z0-9_]{2,})(?==|$|[\s,)'\"])", code):
            if name not in NOT_VARIABLES and not re.search(rf"\b{name}\b", sources):
                misses.append(f"{at}: {name}: no source reads this variable")
    for m in LINK.finditer(text):
        link = m.group(1)
        if re.match(r"[a-z]+:", link):
            continue
        at = f"{where}:{text.count(chr(10), 0, m.start()) + 1}"
        file, _, anchor = link.partition("#")
        target = (doc.parent / file).resolve() if file else doc
        if not target.exists():
            misses.append(f"{at}: {link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            misses.append(f"{at}: {link}: no heading #{anchor} in {target.relative_to(ROOT).as_posix()}")
    return misses


def main() -> int:
    targets, keys, sources = make_targets(), values_keys(), source_text()
    misses = [miss for doc in DOCS for miss in check(doc, targets, keys, sources)]
    for miss in misses:
        print(miss, file=sys.stderr)
    if misses:
        print(f"check-docs: {len(misses)} name(s) in the docs that do not exist", file=sys.stderr)
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
