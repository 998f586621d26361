#!/usr/bin/env python3
"""Checks the CI examples without a CI: the GitHub Actions workflow has the
shape GitHub requires (a YAML schema check that stands in when actionlint
cannot be installed), and every shell step of it and of the Jenkinsfile
passes shellcheck (when shellcheck is there).

Usage: lint-ci-examples.py DIR   (DIR holds github-actions.yml and Jenkinsfile)
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

problems = []


def problem(message):
    problems.append(message)
    print(f"lint: {message}", file=sys.stderr)


def workflow_shape(path):
    with open(path) as f:
        doc = yaml.safe_load(f)
    # PyYAML reads the bare key `on` as True (YAML 1.1).
    trigger = doc.get("on", doc.get(True))
    if not doc.get("name"):
        problem(f"{path}: no `name`")
    if not trigger:
        problem(f"{path}: no `on` trigger")
    jobs = doc.get("jobs") or {}
    if not jobs:
        problem(f"{path}: no jobs")
    runs = []
    for job_id, job in jobs.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", job_id):
            problem(f"{path}: job id `{job_id}` is not valid")
        if "runs-on" not in job:
            problem(f"{path}: job `{job_id}` has no runs-on")
        ids = set()
        for i, step in enumerate(job.get("steps") or []):
            where = f"{path}: jobs.{job_id}.steps[{i}]"
            if ("run" in step) == ("uses" in step):
                problem(f"{where}: a step needs exactly one of `run` and `uses`")
            unknown = set(step) - {"name", "id", "if", "run", "uses", "with", "env",
                                   "shell", "working-directory", "continue-on-error",
                                   "timeout-minutes"}
            if unknown:
                problem(f"{where}: unknown keys {sorted(unknown)}")
            if "id" in step:
                if step["id"] in ids:
                    problem(f"{where}: duplicate step id {step['id']}")
                ids.add(step["id"])
            for ref in re.findall(r"steps\.([A-Za-z0-9_-]+)\.", str(step.get("if", ""))):
                if ref not in ids:
                    problem(f"{where}: `if` names step `{ref}` that has not run before")
            if "run" in step:
                if "${{" in step["run"]:
                    problem(f"{where}: an expression inside `run` (pass it through env: instead)")
                runs.append((where, step["run"]))
    return runs


def jenkins_shell_steps(path):
    text = open(path).read()
    steps = [(f"{path}: sh '''", m) for m in re.findall(r"sh\s*(?:\(\s*returnStatus:\s*true,\s*script:\s*)?'''(.*?)'''", text, re.S)]
    steps += [(f"{path}: sh '", m) for m in re.findall(r"script:\s*'([^'\n]*)'|sh\s+'([^'\n]*)'", text) for m in m if m]
    return steps


def shellcheck(steps, shell):
    if not shutil.which("shellcheck"):
        print("lint: shellcheck not installed; shell steps not checked", file=sys.stderr)
        return
    for where, script in steps:
        with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as f:
            f.write(script)
        try:
            out = subprocess.run(["shellcheck", "-s", shell, "-e", "SC2154", f.name],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                problem(f"{where}:\n{out.stdout}")
        finally:
            os.unlink(f.name)


def main():
    base = sys.argv[1]
    runs = workflow_shape(os.path.join(base, "github-actions.yml"))
    shellcheck(runs, "bash")
    shellcheck(jenkins_shell_steps(os.path.join(base, "Jenkinsfile")), "sh")
    if shutil.which("shellcheck"):
        for script in ("release.sh", "gitops.sh"):
            path = os.path.join(base, script)
            shellcheck([(path, open(path).read())], "bash")
    print(f"lint: {len(problems)} problem(s)")
    sys.exit(1 if problems else 0)


main()
