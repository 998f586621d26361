#!/usr/bin/env python3
"""Renders a kustomization the way `kustomize build` does, for the part of
kustomize that examples/kubernetes/ uses, so that .ci/deploy can validate
the rendered overlays on a machine without kustomize or kubectl:

  resources (files and directories), namespace, configMapGenerator (files,
  `key=path`, behavior create/replace, options.disableNameSuffixHash and
  options.labels), patches (strategic merge from a file: maps merged, lists
  of named items merged by name, other lists replaced) and images (newName,
  newTag).

Anything else in a kustomization is refused with its name, so the renderer
never passes something it does not understand. Where `kubectl kustomize` is
there, .ci/deploy renders with both and requires the same objects.

Usage: kustomize-lite.py DIR   (prints the objects as a YAML stream)
"""
import copy
import os
import sys

import yaml

KNOWN = {"apiVersion", "kind", "resources", "namespace", "configMapGenerator",
         "patches", "images"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding",
                  "CustomResourceDefinition", "PersistentVolume", "StorageClass"}


class Refused(Exception):
    pass


def load_stream(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def kustomization(directory):
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            with open(path) as f:
                return yaml.safe_load(f) or {}
    raise Refused(f"{directory}: no kustomization.yaml")


def key_of(obj):
    meta = obj.get("metadata") or {}
    return (obj.get("kind"), meta.get("name"))


def merge(base, patch):
    """A strategic merge patch, for maps and lists of named items."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = merge(out[k], v)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if (isinstance(base, list) and isinstance(patch, list)
            and all(isinstance(i, dict) and "name" in i for i in base + patch)):
        out = [copy.deepcopy(i) for i in base]
        for item in patch:
            for i, existing in enumerate(out):
                if existing["name"] == item["name"]:
                    out[i] = merge(existing, item)
                    break
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def generate_configmap(directory, spec):
    unknown = set(spec) - {"name", "files", "behavior", "options"}
    options = spec.get("options") or {}
    unknown |= {f"options.{k}" for k in set(options) - {"disableNameSuffixHash", "labels"}}
    if unknown:
        raise Refused(f"{directory}: configMapGenerator fields not understood: {sorted(unknown)}")
    if not options.get("disableNameSuffixHash"):
        raise Refused(f"{directory}: configMapGenerator `{spec['name']}` needs "
                      "options.disableNameSuffixHash: true (a fixed name reloads veer in place)")
    data = {}
    for entry in spec.get("files") or []:
        key, _, path = entry.partition("=") if "=" in entry else (os.path.basename(entry), "", entry)
        with open(os.path.join(directory, path)) as f:
            data[key] = f.read()
    meta = {"name": spec["name"]}
    if options.get("labels"):
        meta["labels"] = dict(options["labels"])
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def set_image(obj, images):
    spec = (obj.get("spec") or {}).get("template", {}).get("spec") or obj.get("spec") or {}
    for field in ("containers", "initContainers"):
        for container in spec.get(field) or []:
            name, _, tag = container.get("image", "").rpartition(":")
            if not name:
                name, tag = container.get("image", ""), ""
            for image in images:
                if image["name"] == name:
                    new_name = image.get("newName", name)
                    new_tag = image.get("newTag", tag)
                    container["image"] = f"{new_name}:{new_tag}" if new_tag else new_name


def build(directory):
    k = kustomization(directory)
    unknown = set(k) - KNOWN
    if unknown:
        raise Refused(f"{directory}: kustomization fields not understood: {sorted(unknown)}")
    objects = []
    for resource in k.get("resources") or []:
        path = os.path.normpath(os.path.join(directory, resource))
        objects.extend(build(path) if os.path.isdir(path) else load_stream(path))
    for spec in k.get("configMapGenerator") or []:
        generated = generate_configmap(directory, spec)
        behavior = spec.get("behavior", "create")
        index = [i for i, o in enumerate(objects) if key_of(o) == key_of(generated)]
        if behavior == "create":
            if index:
                raise Refused(f"{directory}: ConfigMap {spec['name']} already exists")
            objects.append(generated)
        elif behavior == "replace":
            if not index:
                raise Refused(f"{directory}: no ConfigMap {spec['name']} to replace")
            old = objects[index[0]]
            generated["metadata"] = merge(old.get("metadata") or {}, generated["metadata"])
            objects[index[0]] = generated
        else:
            raise Refused(f"{directory}: configMapGenerator behavior `{behavior}` not understood")
    for patch in k.get("patches") or []:
        if set(patch) != {"path"}:
            raise Refused(f"{directory}: only `patches: - path: FILE` is understood")
        for doc in load_stream(os.path.join(directory, patch["path"])):
            index = [i for i, o in enumerate(objects) if key_of(o) == key_of(doc)]
            if not index:
                raise Refused(f"{directory}: patch {patch['path']} matches no object {key_of(doc)}")
            objects[index[0]] = merge(objects[index[0]], doc)
    for obj in objects:
        set_image(obj, k.get("images") or [])
        if k.get("namespace") and obj.get("kind") not in CLUSTER_SCOPED:
            obj.setdefault("metadata", {})["namespace"] = k["namespace"]
    return objects


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 64
    try:
        objects = build(sys.argv[1])
    except (Refused, OSError, yaml.YAMLError) as err:
        print(f"kustomize-lite: {err}", file=sys.stderr)
        return 1
    yaml.safe_dump_all(objects, sys.stdout, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
