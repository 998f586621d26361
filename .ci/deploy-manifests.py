#!/usr/bin/env python3
"""Renders every kustomization root under examples/kubernetes/ into OUT (one
YAML stream per root, for kubernetes-validate), with .ci/kustomize-lite.py
and, where `kubectl kustomize` is there, with kustomize itself (the two must
give the same objects); writes the veer config of every ConfigMap that
carries one to OUT/configs/ (for `veer check`); and checks the shape of the
custom resources that no Kubernetes schema covers (the ServiceMonitor and
PodMonitor, the Argo CD Application, Flux's GitRepository and Kustomization), including
that the GitOps tools point at a directory that renders.

Usage: deploy-manifests.py REPO OUT
"""
import os
import shutil
import subprocess
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
lite = __import__("kustomize-lite")

# Every root a user may sync; together they include every manifest file.
ROOTS = [".", "overlays/staging", "blue-green", "sidecar/classic"]

problems = []


def problem(message):
    problems.append(message)
    print(f"deploy: {message}", file=sys.stderr)


def keyed(objects):
    out = {}
    for obj in objects:
        meta = obj.get("metadata") or {}
        out[(obj.get("kind"), meta.get("namespace"), meta.get("name"))] = obj
    return out


def render(base, root):
    path = os.path.normpath(os.path.join(base, root))
    try:
        objects = lite.build(path)
    except (lite.Refused, OSError, yaml.YAMLError) as err:
        problem(f"{root}: {err}")
        return []
    if shutil.which("kubectl"):
        run = subprocess.run(["kubectl", "kustomize", path], capture_output=True, text=True)
        if run.returncode != 0:
            problem(f"{root}: kubectl kustomize failed: {run.stderr.strip()}")
        else:
            theirs = keyed(d for d in yaml.safe_load_all(run.stdout) if d)
            ours = keyed(objects)
            for key in sorted(set(theirs) | set(ours), key=str):
                if key not in ours:
                    problem(f"{root}: kustomize renders {key}, kustomize-lite does not")
                elif key not in theirs:
                    problem(f"{root}: kustomize-lite renders {key}, kustomize does not")
                elif theirs[key] != ours[key]:
                    problem(f"{root}: {key} differs between kustomize and kustomize-lite")
    return objects


def need(obj, where, *path):
    value = obj
    for part in path:
        if not isinstance(value, dict) or part not in value:
            problem(f"{where}: missing {'.'.join(path)}")
            return None
        value = value[part]
    return value


def check_custom(obj, where, repo):
    kind = obj.get("kind")
    name = f"{where}: {kind} {obj.get('metadata', {}).get('name')}"
    if kind == "ServiceMonitor":
        for endpoint in need(obj, name, "spec", "endpoints") or []:
            if "port" not in endpoint:
                problem(f"{name}: an endpoint names no port")
        need(obj, name, "spec", "selector", "matchLabels")
    elif kind == "PodMonitor":
        for endpoint in need(obj, name, "spec", "podMetricsEndpoints") or []:
            if "port" not in endpoint:
                problem(f"{name}: an endpoint names no port")
        need(obj, name, "spec", "selector")
    elif kind == "Application":
        path = need(obj, name, "spec", "source", "path")
        need(obj, name, "spec", "source", "repoURL")
        need(obj, name, "spec", "destination", "namespace")
        if path and not os.path.exists(os.path.join(repo, path, "kustomization.yaml")):
            problem(f"{name}: spec.source.path `{path}` holds no kustomization")
    elif kind == "Kustomization" and obj.get("apiVersion", "").startswith("kustomize.toolkit.fluxcd.io"):
        path = need(obj, name, "spec", "path")
        need(obj, name, "spec", "sourceRef", "name")
        if path and not os.path.exists(os.path.join(repo, path, "kustomization.yaml")):
            problem(f"{name}: spec.path `{path}` holds no kustomization")
    elif kind == "GitRepository":
        need(obj, name, "spec", "url")
        need(obj, name, "spec", "ref")


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 64
    repo, out = sys.argv[1], sys.argv[2]
    base = os.path.join(repo, "examples", "kubernetes")
    os.makedirs(os.path.join(out, "configs"), exist_ok=True)
    configs = 0
    for root in ROOTS:
        objects = render(base, root)
        slug = "root" if root == "." else root.replace("/", "-")
        with open(os.path.join(out, f"{slug}.yaml"), "w") as f:
            yaml.safe_dump_all(objects, f, sort_keys=True)
        for obj in objects:
            check_custom(obj, root, repo)
            if obj.get("kind") == "ConfigMap" and "veer.yaml" in (obj.get("data") or {}):
                name = obj["metadata"]["name"]
                with open(os.path.join(out, "configs", f"{slug}--{name}.yaml"), "w") as f:
                    f.write(obj["data"]["veer.yaml"])
                configs += 1
    for file in sorted(os.listdir(os.path.join(repo, "examples", "gitops"))):
        path = os.path.join(repo, "examples", "gitops", file)
        with open(path) as f:
            for obj in yaml.safe_load_all(f):
                if obj:
                    check_custom(obj, f"examples/gitops/{file}", repo)
    print(f"deploy: rendered {len(ROOTS)} roots, {configs} veer configs"
          + (" (compared with kubectl kustomize)" if shutil.which("kubectl") else
             " (no kubectl: rendered by kustomize-lite alone)"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
